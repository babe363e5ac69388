"""The personal reward model: the posterior fit by hand, the prior's pull, thumbs, uncertainty,
serialisation, and (on the real backbone) a user who wants lists learned from a few dozen labels."""

import math
import random
from datetime import datetime, timezone

import pytest
import torch

from learning.config import Budgets
from learning.data import Dataset, PointLabel, PreferencePair
from learning.preference_fit import fit_preferences
from learning.reward import FeatureCache, Preference, RewardModel

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_one_pair_one_feature_matches_the_hand_solution():
    # log-posterior of w: log sigmoid(w * 1) - w^2 / 2 (prior N(0, 1); the bias column is unused by pairs).
    # Stationary point: 1 - sigmoid(w) = w  ->  w = 0.40106 (w = 1 / (1 + e^w), solved by iteration);
    # curvature: sigmoid(w)(1 - sigmoid(w)) + 1 = 0.59894 * 0.40106 + 1 = 1.24021 -> variance 0.80631.
    theta, cov = fit_preferences((torch.tensor([[1.0]]), torch.tensor([[0.0]])), None,
                                 torch.zeros(2), torch.tensor([1.0, 1.0]))
    assert theta[0].item() == pytest.approx(0.40106, abs=1e-4)
    assert theta[1].item() == pytest.approx(0.0, abs=1e-6)  # no thumbs: the bias stays at its prior mean
    assert cov[0, 0].item() == pytest.approx(0.80631, abs=1e-4)


def test_thumbs_fit_a_bias_and_no_labels_give_the_prior():
    # Four thumbs up, one down, all at z = 0: only the bias can explain them. Log-posterior in b:
    # 4 log s(b) + log(1 - s(b)) - 0.1 b^2 / 2  ->  4 (1 - s) - s - 0.1 b = 0  ->  4 - 5 s = 0.1 b  ->  b = 1.2381 (s = 0.7753)
    z = torch.zeros(5, 1)
    theta, _ = fit_preferences(None, (z, torch.tensor([1.0, 1, 1, 1, 0])), torch.zeros(2), torch.tensor([1.0, 0.1]))
    b = theta[1].item()
    s = 1 / (1 + math.exp(-b))
    assert 4 * (1 - s) - s - 0.1 * b == pytest.approx(0.0, abs=1e-5) and b == pytest.approx(1.2381, abs=1e-3)
    prior = torch.tensor([0.5, -0.2, 0.3])
    theta, cov = fit_preferences(None, None, prior, torch.tensor([4.0, 4.0, 1.0]))
    assert torch.allclose(theta, prior) and torch.allclose(torch.diag(cov), torch.tensor([0.25, 0.25, 1.0]))


def test_the_prior_decides_for_few_labels_and_the_data_for_many():
    # The population likes feature 0; this user likes feature 1 and says so with their pairs.
    rng = random.Random(0)
    prior = torch.tensor([2.0, 0.0, 0.0])  # [w0, w1, bias]
    precision = torch.full((3,), 2.0)

    def user_pairs(n):
        zc, zr = [], []
        for _ in range(n):
            a, b = [rng.gauss(0, 1), rng.gauss(0, 1)], [rng.gauss(0, 1), rng.gauss(0, 1)]
            c, r = (a, b) if a[1] > b[1] else (b, a)
            zc.append(c), zr.append(r)
        return torch.tensor(zc), torch.tensor(zr)

    few, _ = fit_preferences(user_pairs(2), None, prior, precision)
    many, cov_many = fit_preferences(user_pairs(400), None, prior, precision)
    _, cov_few = fit_preferences(user_pairs(2), None, prior, precision)
    assert few[0] > few[1]  # two labels cannot overturn the population
    assert many[1] > 3 * abs(many[0])  # four hundred can
    assert torch.trace(cov_many[:2, :2]) < 0.3 * torch.trace(cov_few[:2, :2])  # and it knows it is surer


def test_lower_bound_subtracts_k_standard_deviations():
    pref = Preference(weight=torch.tensor([1.0, 0.0]), cov=torch.tensor([[0.0, 0.0], [0.0, 4.0]]), thumbs_bias=0.0,
                      center=torch.zeros(2), scale=2.0, labels=10)
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert pref.mean(z).tolist() == [0.5, 0.5]
    assert pref.std(z).tolist() == [0.0, 1.0]  # sqrt(1 * 4 * 1) / 2
    assert pref.lower(z, 1.5).tolist() == [0.5, -1.0]


TOPICS = ["tea", "rain", "bread", "cats", "maps", "music", "trees", "boats", "stars", "shoes", "clocks", "lamps"]


def _replies(topic: str) -> tuple[str, str, str]:
    listed = f"Here are tips about {topic}:\n- choose good {topic}\n- look after your {topic}\n- enjoy the {topic}"
    short = f"Just enjoy {topic}."
    long = f"{topic.capitalize()} are a big subject. " * 5 + f"There is a lot to say about {topic}."
    return listed, short, long


@pytest.mark.e2e
@pytest.mark.parametrize("text", [0, 256], ids=["traits", "text-evidence"])
def test_a_user_who_wants_lists_is_learned_from_a_few_dozen_labels(model_data_dir, text):
    from service.model_loading import load_base_model, load_tokenizer
    from service.settings import Settings

    settings = Settings(data_dir=model_data_dir, dev_mode=True)
    tokenizer, model = load_tokenizer(settings), load_base_model(settings, dtype=torch.float32)
    # with hashed text columns (chosen by evidence), part of the list signal sits in them ("- " lines):
    # "what the assistant learned" must still name lists, not a minor trait (before: "warm")
    budgets = Budgets(min_user_labels=4, heldout_fraction=0.01, reward_steps=50, reward_text_features=text,
                      reward_text_evidence=bool(text))
    render = lambda q: tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,  # noqa: E731
                                                     add_generation_prompt=True)
    data = Dataset()
    mid = 0
    for i, topic in enumerate(TOPICS[:8]):
        listed, short, long = _replies(topic)
        prompt = render(f"Tell me about {topic}.")
        mid += 3
        # user 1 wants lists; users 2 and 3 (the population) want short replies
        data.pairs.append(PreferencePair(1, prompt, listed, short, mid, mid + 1, f"r{i}", NOW))
        data.pairs.append(PreferencePair(1, prompt, listed, long, mid, mid + 2, f"r{i}b", NOW))
        data.points.append(PointLabel(1, prompt, listed, 1, mid, 100 + i, NOW))
        for uid in (2, 3):
            data.pairs.append(PreferencePair(uid, prompt, short, long, mid + 1, mid + 2, f"s{i}", NOW))
            data.pairs.append(PreferencePair(uid, prompt, short, listed, mid + 1, mid, f"s{i}b", NOW))
    model_rm = RewardModel(FeatureCache(model, tokenizer, budgets), budgets)
    metrics = model_rm.fit(data, data)
    assert 1 in metrics["reward/personalized_users"]

    # unseen topics: user 1's reward puts the list first, the population's the short reply
    for topic in TOPICS[8:]:
        prompt = render(f"Tell me about {topic}.")
        listed, short, long = _replies(topic)
        mine = model_rm.score(1, [prompt] * 3, [listed, short, long])
        everyone = model_rm.score(None, [prompt] * 3, [listed, short, long])
        assert int(mine.argmax()) == 0 and int(everyone.argmax()) == 1, (mine, everyone)
    top = model_rm.top_traits(1)[0]  # the list replies open with a "Here are tips:" label line
    assert top.trait in ("lists", "line_breaks", "headings") and top.likes, model_rm.top_traits(1)

    # the hand-off: a model rebuilt from its state scores the same features identically
    feats = model_rm.cache.features([prompt] * 3, [listed, short, long])
    again = RewardModel.from_state(model_rm.state_dict(), budgets)
    for uid in (1, None):
        a, _ = model_rm.rewards(uid, feats, [prompt] * 3, [listed, short, long], k=1.0)
        b, _ = again.rewards(uid, feats, [prompt] * 3, [listed, short, long], k=1.0)
        assert torch.allclose(a, b, atol=1e-5)


BRITISH = (("colour", "color"), ("favourite", "favorite"), ("organise", "organize"), ("centre", "center"))


@pytest.mark.e2e
def test_a_preference_no_trait_measures_is_learned_from_the_text_and_served_alike(model_data_dir):
    """Issue 26, item 2: a user who prefers British spelling. No named trait tells "colour" from "color";
    the hashed text features do, the same for the trainer and for serving's best-of-n."""
    from service.model_loading import load_base_model, load_tokenizer
    from service.settings import Settings

    settings = Settings(data_dir=model_data_dir, dev_mode=True)
    tokenizer, model = load_tokenizer(settings), load_base_model(settings, dtype=torch.float32)
    budgets = Budgets(min_user_labels=4, heldout_fraction=0.01, reward_text_features=256, reward_text_precision=1.0)
    render = lambda q: tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,  # noqa: E731
                                                     add_generation_prompt=True)

    def pair(topic: str, k: int) -> tuple[str, str]:
        uk, us = BRITISH[k % len(BRITISH)]
        line = "The {} of {} matters; pick your {} one."
        return line.format(uk, topic, BRITISH[(k + 1) % len(BRITISH)][0]), line.format(us, topic, BRITISH[(k + 1) % len(BRITISH)][1])

    data, mid = Dataset(), 0
    for i, topic in enumerate(TOPICS[:8]):
        prompt = render(f"Tell me about {topic}.")
        uk, us = pair(topic, i)
        mid += 2
        data.pairs.append(PreferencePair(1, prompt, uk, us, mid, mid + 1, f"r{i}", NOW))  # user 1: British
        data.points.append(PointLabel(1, prompt, uk, 1, mid, 100 + i, NOW))
        data.points.append(PointLabel(1, prompt, us, 0, mid + 1, 200 + i, NOW))
        for uid in (2, 3):  # everyone else: American
            data.pairs.append(PreferencePair(uid, prompt, us, uk, mid + 1, mid, f"s{uid}{i}", NOW))
    model_rm = RewardModel(FeatureCache(model, tokenizer, budgets), budgets)
    model_rm.fit(data, data)
    assert model_rm.basis.text_dim == 256 and model_rm.basis.names[len(model_rm.basis.names) - 1] == "text_h255"

    served = model_rm.reply_reward(1)
    for i, topic in enumerate(TOPICS[8:]):  # unseen topics
        prompt = render(f"Tell me about {topic}.")
        uk, us = pair(topic, i + 1)
        mine = model_rm.score(1, [prompt] * 2, [uk, us])
        everyone = model_rm.score(None, [prompt] * 2, [uk, us])
        assert mine[0] > mine[1] and everyone[1] > everyone[0], (topic, mine, everyone)
        # serving scores from the text alone, with the same basis: the same order, the same rewards
        z = served.z(prompt, [uk, us])
        assert torch.allclose(served.user.mean(z), mine, atol=1e-4)
    again = RewardModel.from_state(model_rm.state_dict(), budgets)
    assert torch.equal(again.basis.text_mu, model_rm.basis.text_mu)


def test_the_evidence_is_the_marginal_likelihood():
    from learning.preference_fit import fit_preferences_with_evidence

    # no labels: the evidence of any prior is log 1
    assert fit_preferences_with_evidence(None, None, torch.zeros(2), torch.tensor([3.0, 1.0]))[2] == pytest.approx(0.0, abs=1e-9)
    # one pair, w ~ N(0, 1): P(chosen wins) = E[sigmoid(w)] = 1/2 by symmetry; Laplace is close
    one = fit_preferences_with_evidence((torch.tensor([[1.0]]), torch.tensor([[0.0]])), None, torch.zeros(2), torch.ones(2))[2]
    assert one == pytest.approx(math.log(0.5), abs=0.01)
    # five agreeing pairs: log E[sigmoid(w)^5], by quadrature -2.348
    five = fit_preferences_with_evidence((torch.ones(5, 1), torch.zeros(5, 1)), None, torch.zeros(2), torch.ones(2))[2]
    assert five == pytest.approx(-2.348, abs=0.02)


@pytest.mark.parametrize("which, n, wants_text", [(0, 24, False), (10, 80, True)])
def test_the_evidence_chooses_text_only_for_labels_text_explains(which, n, wants_text):
    """2 trait columns and 40 text columns; the labels follow one column (a trait or a text one):
    among the text block's prior precisions, the highest evidence pins the text weights (1e6) when a
    trait explains the labels, and frees them when a text column does."""
    from learning.preference_fit import fit_preferences_with_evidence
    from learning.reward import REWARD_TEXT_PRECISION_GRID

    g = torch.Generator().manual_seed(0)
    zc, zr = torch.randn(n, 42, generator=g), torch.randn(n, 42, generator=g)
    w = torch.zeros(42)
    w[which] = 3.0
    flip = (torch.sigmoid((zc - zr) @ w) < torch.rand(n, generator=g)).unsqueeze(1)
    chosen, rejected = torch.where(flip, zr, zc), torch.where(flip, zc, zr)

    def evidence(text_precision: float) -> float:
        prec = torch.full((43,), 2.0)
        prec[2:42] *= text_precision
        return fit_preferences_with_evidence((chosen, rejected), None, torch.zeros(43), prec)[2]

    best = max(REWARD_TEXT_PRECISION_GRID, key=evidence)
    assert (best < 1e6) is wants_text


def test_a_text_basis_is_shared_by_the_trainer_and_serving_and_survives_the_hand_off():
    """``reward_text_basis``: the buckets projected on K principal directions of the training replies. The trainer's
    basis and serving's text-only reward compute the same columns, before and after their JSON round trips."""
    from learning.reward import Basis
    from service.reply_reward import ReplyReward

    prompt = "Tell me about tea."
    replies = ["Tea is a drink.", "Colour your tea.", "- Tea\n- Leaves", "Tea, in short: leaves.", "Honestly, tea."]
    feats = torch.zeros((len(replies), 3))  # no backbone columns (k = 0): only their statistics are read
    basis = Basis.fit(feats, [prompt] * len(replies), replies, 0, None, text_dim=64, text_basis=2)
    n_traits = basis.text_slice().start
    assert basis.text_dim == 2 and basis.names[n_traits:] == ["text_pc0", "text_pc1"] and basis.dim == n_traits + 2
    z = basis(feats, [prompt] * len(replies), replies)
    assert torch.allclose(z[:, basis.text_slice()].std(0), torch.ones(2), atol=1e-5)
    again = Basis.from_state(basis.state_dict())
    assert torch.allclose(again(feats, [prompt] * len(replies), replies), z)
    weight = torch.arange(basis.dim, dtype=torch.float32) / basis.dim
    pref = Preference(weight, torch.eye(basis.dim), 0.0, torch.zeros(basis.dim), 1.0, 30)
    served = ReplyReward(basis.trait_mu, basis.trait_sd, pref, pref, 1.0, basis.text_mu, basis.text_proj)
    assert torch.allclose(served.z(prompt, replies), z, atol=1e-5)
    assert ReplyReward.from_state(served.state_dict()).score(prompt, replies) == pytest.approx(served.score(prompt, replies))
    plain = Basis.fit(feats, [prompt] * len(replies), replies, 0, None, text_dim=64)  # no basis: every bucket a column
    assert plain.text_dim == 64 and plain.names[n_traits] == "text_h0"
    assert Basis.from_state(plain.state_dict()).text_proj.shape == (64, 0)
