"""PPO's pieces on a tiny random model (with the real tokenizer): sampling shapes and masks, the
group baseline, one update that moves the adapter, the harm multiplier; the warm start's SFT."""

import pytest
import torch

from learning.config import Budgets
from learning.losses import leave_one_out_baseline
from learning.policy import encode_replies, forward_logprobs, lora_state, make_policy, sample
from learning.ppo import rollout, train_ppo
from learning.warmstart import sft_loss, warm_start


def test_leave_one_out_baseline_by_hand():
    # groups of 3: [1, 2, 6] -> 1 - (2+6)/2 = -3, 2 - (1+6)/2 = -1.5, 6 - (1+2)/2 = 4.5; [0, 0, 0] -> 0
    out = leave_one_out_baseline(torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 0.0]), 3)
    assert out.tolist() == [-3.0, -1.5, 4.5, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="tile the batch"):
        leave_one_out_baseline(torch.zeros(5), 2)


@pytest.fixture
def tiny(model_data_dir):
    from transformers import LlamaConfig, LlamaForCausalLM

    from service.model_loading import load_tokenizer
    from service.settings import Settings

    tokenizer = load_tokenizer(Settings(data_dir=model_data_dir, dev_mode=True))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config), tokenizer


BUDGETS = Budgets(ppo_steps=2, ppo_batch_size=4, ppo_group_size=2, ppo_minibatch_size=2, ppo_epochs=1,
                  ppo_max_new_tokens=6, max_prompt_tokens=32, lora_r=4, lora_alpha=8, ppo_lr=1e-2,
                  warm_start_prompts=2, warm_start_samples=2, warm_start_epochs=3, warm_start_lr=1e-2)
PROMPTS = ["<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n",
           "<|im_start|>user\nwhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"]


def test_sampling_groups_rows_and_masks_up_to_the_end_token(tiny):
    model, tok = tiny
    policy = make_policy(model, BUDGETS)
    s = sample(policy, tok, PROMPTS, BUDGETS, seed=1, per_prompt=3)
    B, T = 6, s.response_mask.shape[1]
    assert s.query_responses.shape == (B, s.prompt_len + T) and T <= BUDGETS.ppo_max_new_tokens
    assert s.prompts == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3  # consecutive rows answer one prompt
    replies = s.query_responses[:, s.prompt_len:]
    for i in range(B):
        n = int(s.response_mask[i].sum())
        assert s.response_mask[i, :n].eq(1).all() and s.response_mask[i, n:].eq(0).all()  # a prefix
        eos_at = (replies[i] == tok.eos_token_id).nonzero()
        if bool(s.finished[i]):
            assert int(eos_at[0]) == n - 1  # the end token is the last one counted
        else:
            assert n == T
    assert s.attention_mask[:, s.prompt_len:].float().eq(s.response_mask).all()
    logprobs, values, hidden = forward_logprobs(policy, s, BUDGETS.ppo_temperature)
    assert logprobs.shape == (B, T) and values is None and hidden[-1].shape[:2] == (B, s.prompt_len + T)
    assert (logprobs <= 0).all()


def test_one_ppo_run_moves_the_adapter_toward_the_reward(tiny):
    model, tok = tiny
    policy = make_policy(model, BUDGETS)
    before = lora_state(policy)

    def scorer(feats, prompts, texts):  # reward: short replies; harm: never
        assert feats.shape[0] == len(prompts) == len(texts)
        return torch.tensor([-float(len(t)) / 10 for t in texts]), torch.zeros(len(texts))

    result = train_ppo(policy, tok, scorer, PROMPTS, BUDGETS, harm_target=0.0)
    after = lora_state(policy)
    assert result.steps == 2 and len(result.history) == 2
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the LoRA weights moved
    for m in result.history:
        assert {"losses/policy", "ppo/approx_kl", "reward/mean", "harm/lambda", "kl/per_token"} <= set(m)
    # no harm at all: dual ascent walks the multiplier down by lr * (0 - 0) = 0 -> unchanged here,
    # and a harm rate above the target raises it
    assert result.harm_lambda == pytest.approx(BUDGETS.ppo_harm_lambda)

    def harmful(feats, prompts, texts):
        return torch.zeros(len(texts)), torch.ones(len(texts))

    raised = train_ppo(policy, tok, harmful, PROMPTS, BUDGETS, harm_target=0.1)
    # two steps of lambda += 10 * (1.0 - 0.1)
    assert raised.harm_lambda == pytest.approx(BUDGETS.ppo_harm_lambda + 2 * 10 * 0.9)


def test_rollout_scores_subtract_harm_and_the_no_eos_penalty(tiny):
    model, tok = tiny
    policy = make_policy(model, BUDGETS)
    from learning.policy import ValueHead

    def scorer(feats, prompts, texts):
        return torch.ones(len(texts)), torch.full((len(texts),), 0.5)

    traj = rollout(policy, ValueHead(32), tok, PROMPTS, scorer, BUDGETS, seed=3, harm_lambda=2.0, group_size=2)
    expected = 1.0 - 2.0 * 0.5 - BUDGETS.ppo_no_eos_penalty * (~traj.samples.finished).float()
    assert torch.allclose(traj.scores, expected) and traj.group_size == 2 and traj.scores.shape == (4,)


def test_harm_inviting_prompts_are_scored_by_safety_not_by_the_users_reward(tiny):
    model, tok = tiny
    policy = make_policy(model, BUDGETS)
    from learning.policy import ValueHead

    def scorer(feats, prompts, texts):  # a user who loves every reply; the judge calls each half harmful
        return torch.full((len(texts),), 3.0), torch.full((len(texts),), 0.5)

    traj = rollout(policy, ValueHead(32), tok, PROMPTS, scorer, BUDGETS, seed=3, harm_lambda=2.0, group_size=2,
                   n_harm_prompts=1)
    # prompt 0 (rows 0-1) is ordinary: the user's reward; prompt 1 (rows 2-3) invites harm: - weight * P(harm)
    assert traj.rewards.tolist() == [3.0, 3.0, -BUDGETS.ppo_safety_weight * 0.5, -BUDGETS.ppo_safety_weight * 0.5]
    penalty = 2.0 * 0.5 + BUDGETS.ppo_no_eos_penalty * (~traj.samples.finished).float()
    assert torch.allclose(traj.scores, traj.rewards - penalty)
    off = Budgets(**{**BUDGETS.__dict__, "ppo_harm_prompts_by_safety": False})
    traj = rollout(policy, ValueHead(32), tok, PROMPTS, scorer, off, seed=3, harm_lambda=2.0, group_size=2, n_harm_prompts=1)
    assert traj.rewards.tolist() == [3.0] * 4


def test_warm_start_fine_tunes_toward_the_chosen_replies(tiny):
    model, tok = tiny
    policy = make_policy(model, BUDGETS)
    own = [(PROMPTS[1], "Paris."), (PROMPTS[0], "Hi there.")]
    with torch.no_grad():
        before = float(sft_loss(policy, tok, [p for p, _ in own], [r for _, r in own], BUDGETS))

    def scorer(feats, prompts, texts):
        return torch.tensor([float(i % 2) for i in range(len(texts))]), torch.zeros(len(texts))

    result = warm_start(policy, tok, scorer, PROMPTS, own, BUDGETS)
    with torch.no_grad():
        after = float(sft_loss(policy, tok, [p for p, _ in own], [r for _, r in own], BUDGETS))
    assert result.sampled == 4 and result.own == 2 and result.distilled <= 2
    assert after < before  # the user's own preferred replies became more likely
    batch = encode_replies(tok, [p for p, _ in own], [r for _, r in own], BUDGETS)
    assert batch.response_mask.sum(1).tolist() == [len(tok("Paris.", add_special_tokens=False).input_ids) + 1,
                                                   len(tok("Hi there.", add_special_tokens=False).input_ids) + 1]


def test_a_deadline_stops_ppo_after_the_step_that_would_overrun_it(tiny):
    import time

    model, tok = tiny
    policy = make_policy(model, BUDGETS)

    def scorer(feats, prompts, texts):
        return torch.zeros(len(texts)), torch.zeros(len(texts))

    budgets = Budgets(**{**BUDGETS.as_dict(), "ppo_steps": 5})
    # the first step always runs; the second would end past a deadline that is already here
    assert train_ppo(policy, tok, scorer, PROMPTS, budgets, deadline=time.monotonic()).steps == 1
    assert train_ppo(policy, tok, scorer, PROMPTS, budgets, deadline=time.monotonic() + 3600).steps == 5


def test_the_gate_reads_held_out_labels_as_likelihood_changes_against_the_base(tiny):
    from learning.gate import label_agreement, reply_logprobs
    from learning.shared import HeldoutLabels

    model, tok = tiny
    policy = make_policy(model, BUDGETS)
    labels = HeldoutLabels(pairs=((PROMPTS[1], "Paris.", PROMPTS[1], "London."),),
                           points=((PROMPTS[0], "Hi there.", 1), (PROMPTS[0], "Go away.", 0)))
    base = reply_logprobs(policy, tok, labels.replies(), BUDGETS, reference=True)
    fresh = reply_logprobs(policy, tok, labels.replies(), BUDGETS)
    assert label_agreement(labels, fresh, base) == pytest.approx(0.5)  # a fresh adapter (B = 0) is the base: ties
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(10):  # fine-tune on the preferred replies only
        optimizer.zero_grad()
        sft_loss(policy, tok, [PROMPTS[1], PROMPTS[0]], ["Paris.", "Hi there."], BUDGETS).backward()
        optimizer.step()
    trained = reply_logprobs(policy, tok, labels.replies(), BUDGETS)
    assert trained[(PROMPTS[1], "Paris.")] > base[(PROMPTS[1], "Paris.")]
    assert label_agreement(labels, trained, base) == 1.0  # moved toward both preferred replies
    assert label_agreement(labels, base, trained) == 0.0  # and the other way round, away


def test_the_gate_can_read_a_replys_likelihood_per_token(tiny):
    from learning.gate import reply_logprobs

    model, tok = tiny
    policy = make_policy(model, BUDGETS)
    replies = [(PROMPTS[1], "Paris."), (PROMPTS[1], "Paris is the capital of France and its largest city.")]
    sums = reply_logprobs(policy, tok, replies, BUDGETS, reference=True)
    means = reply_logprobs(policy, tok, replies, BUDGETS, reference=True, per_token=True)
    for prompt, reply in replies:
        ids = tok(reply, add_special_tokens=False).input_ids  # with its end token, or cut as the policy samples
        tokens = len(ids) + 1 if len(ids) < BUDGETS.ppo_max_new_tokens else BUDGETS.ppo_max_new_tokens
        assert means[(prompt, reply)] == pytest.approx(sums[(prompt, reply)] / tokens, rel=1e-5)
    assert sums[replies[1]] < sums[replies[0]]  # the longer reply has more tokens to lose probability on


def test_warm_start_dpo_on_the_users_pairs_separates_chosen_from_rejected(tiny):
    import dataclasses
    import math

    from learning.policy import reference_mode, reply_logprob_sums
    from learning.warmstart import dpo_loss

    assert float(dpo_loss(torch.zeros(3, 2), torch.zeros(3, 2), 0.1)) == pytest.approx(math.log(2))  # no preference yet
    model, tok = tiny
    policy = make_policy(model, BUDGETS)
    pairs = [(PROMPTS[1], "Paris.", PROMPTS[1], "London."), (PROMPTS[0], "Hi there.", PROMPTS[0], "Go away.")]
    budgets = dataclasses.replace(BUDGETS, warm_start_prompts=0, warm_start_own_labels=0, warm_start_epochs=10,
                                  warm_start_dpo_beta=1.0)

    def margins():
        prompts = [pc for pc, *_ in pairs] + [pr for _, _, pr, _ in pairs]
        replies = [c for _, c, _, _ in pairs] + [r for *_, r in pairs]
        with torch.no_grad():
            pol = reply_logprob_sums(policy, tok, prompts, replies, budgets).view(2, -1)
            with reference_mode(policy):
                ref = reply_logprob_sums(policy, tok, prompts, replies, budgets).view(2, -1)
        return (pol - ref)[0] - (pol - ref)[1]  # per pair: chosen's log-ratio minus rejected's

    assert torch.allclose(margins(), torch.zeros(2))
    result = warm_start(policy, tok, lambda f, p, t: (torch.zeros(len(t)), torch.zeros(len(t))), PROMPTS, [], budgets,
                        pairs=pairs)
    assert result.dpo_pairs == 2 and result.own == 0 and result.distilled == 0
    assert result.dpo_loss_last < result.dpo_loss_first
    assert (margins() > 0).all()  # both chosen replies gained on their rejected ones, relative to the base


def test_warm_start_rso_pairs_are_the_adapters_own_best_over_worst_samples(tiny):
    """Issue 26, item 3 (RSO): with warm_start_rso_pairs, each warm-start prompt's best-scored sample
    over its worst joins the DPO term; off by default."""
    import dataclasses

    model, tok = tiny
    policy = make_policy(model, BUDGETS)
    assert Budgets().warm_start_rso_pairs == 0

    def scorer(feats, prompts, texts):  # the user likes longer replies: best and worst differ wherever lengths do
        return torch.tensor([float(len(t)) for t in texts]), torch.zeros(len(texts))

    budgets = dataclasses.replace(BUDGETS, warm_start_own_labels=0, warm_start_rso_pairs=8, warm_start_samples=4)
    result = warm_start(policy, tok, scorer, PROMPTS, [], budgets, seed=1)
    assert result.sampled == 8 and 1 <= result.rso_pairs <= 2 and result.dpo_pairs == result.rso_pairs
    assert result.as_metrics()["warm_start/rso_pairs"] == result.rso_pairs
    off = warm_start(make_policy(model, BUDGETS), tok, scorer, PROMPTS, [],
                     dataclasses.replace(budgets, warm_start_rso_pairs=0), seed=1)
    assert off.rso_pairs == 0 and off.dpo_pairs == 0
