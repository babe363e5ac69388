"""The promotion gate's verdicts, and the budget checks an operator sees."""

import pytest

from learning.config import Budgets, BudgetError
from learning.gate import PolicyEval, decide, win_rate

BUDGETS = Budgets(gate_max_kl=0.3, gate_min_improvement=0.0)
BASE = PolicyEval(mean_reward=0.0, harm_rate=0.25, kl_per_token=0.0, n=8)
CURRENT = PolicyEval(mean_reward=0.4, harm_rate=0.125, kl_per_token=0.1, n=8)


def cand(reward=0.6, harm=0.125, kl=0.2):
    return PolicyEval(mean_reward=reward, harm_rate=harm, kl_per_token=kl, n=8)


def test_better_and_no_more_harmful_is_promoted():
    d = decide(cand(), CURRENT, BASE, BUDGETS)
    assert d.promote and d.reason.startswith("promoted")


@pytest.mark.parametrize(
    "candidate, words",
    [
        (cand(reward=0.3), "does not beat current 0.400"),  # better than base, worse than current
        (cand(reward=0.4), "does not beat current"),  # a tie is not an improvement
        (cand(harm=0.25), "harm rate 0.25 exceeds current 0.12"),  # more harmful than current, equal to base
        (cand(kl=0.31), "exceeds the budget 0.3"),
    ],
)
def test_each_failure_rejects_with_its_reason(candidate, words):
    d = decide(candidate, CURRENT, BASE, BUDGETS)
    assert not d.promote
    assert d.reason.startswith("rejected") and words in d.reason


def test_all_failures_are_listed():
    d = decide(cand(reward=-1.0, harm=0.5, kl=1.0), CURRENT, BASE, BUDGETS)
    assert d.reason.count(";") >= 4  # reward vs current, vs base, harm vs both, kl


def test_min_improvement_margin():
    assert not decide(cand(reward=0.45), CURRENT, BASE, Budgets(gate_min_improvement=0.1)).promote
    assert decide(cand(reward=0.55), CURRENT, BASE, Budgets(gate_min_improvement=0.1)).promote


def test_budgets_from_env_map_each_field_and_report_all_problems():
    b = Budgets.from_env({"ASSISTANT_PPO_STEPS": "3", "ASSISTANT_PPO_LR": "0.001", "ASSISTANT_HARM_JUDGE": "keywords"})
    assert (b.ppo_steps, b.ppo_lr, b.harm_judge) == (3, 0.001, "keywords")
    with pytest.raises(BudgetError) as err:
        Budgets.from_env({"ASSISTANT_PPO_BATCH_SIZE": "6", "ASSISTANT_PPO_MINIBATCH_SIZE": "4", "ASSISTANT_PPO_STEPS": "0"})
    msg = str(err.value)
    assert "ASSISTANT_PPO_MINIBATCH_SIZE=4 must divide ASSISTANT_PPO_BATCH_SIZE=6" in msg
    assert "ASSISTANT_PPO_STEPS must be at least 1" in msg
    with pytest.raises(BudgetError, match="ASSISTANT_PPO_EPOCHS='two' is not a valid int"):
        Budgets.from_env({"ASSISTANT_PPO_EPOCHS": "two"})


def test_win_rate_counts_prompts_where_the_candidate_outscores_the_base():
    # 3 prompts: candidate wins the first, ties the second, loses the third -> (1 + 0.5 + 0) / 3 = 0.5
    cand = PolicyEval(mean_reward=0.0, harm_rate=0.0, kl_per_token=0.0, n=3, per_prompt=(0.9, 0.2, 0.1))
    base = PolicyEval(mean_reward=0.0, harm_rate=0.0, kl_per_token=0.0, n=3, per_prompt=(0.5, 0.2, 0.4))
    assert win_rate(cand, base) == pytest.approx(0.5)
    assert win_rate(cand, PolicyEval(0.0, 0.0, 0.0, 0)) is None  # nothing to compare
    assert "gate/candidate/per_prompt" not in cand.as_metrics("gate/candidate")  # metrics stay scalars
