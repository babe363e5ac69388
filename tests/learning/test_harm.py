"""The harm head: not fitted on a handful of positives; prior-corrected when it is.

Features come from a small stand-in for ``FeatureCache`` (a fixed vector per reply text), so these
tests exercise the head's fitting rules, not the backbone.
"""

import zlib
from datetime import datetime, timezone

import torch

from learning.config import Budgets
from learning.data import Dataset, HarmLabel
from learning.harm import HarmModel, KeywordJudge

DIM = 32


class TextFeatures:
    """Deterministic features per reply: harmful replies are shifted along the first axis."""

    def features(self, prompts, replies):
        rows = []
        for reply in replies:
            g = torch.Generator().manual_seed(zlib.crc32(reply.encode()))
            x = torch.randn(DIM, generator=g)
            if reply.startswith("harmful"):
                x[0] += 10.0
            rows.append(x)
        return torch.stack(rows)  # (N, DIM)


def labels(n_harmful: int, n_harmless: int) -> Dataset:
    now = datetime.now(timezone.utc)
    harm = [HarmLabel(1, "p", f"harmful {i}", 1, i, f"feedback:{i}", now) for i in range(n_harmful)]
    harm += [HarmLabel(1, "p", f"fine {i}", 0, 1000 + i, f"feedback:{1000 + i}", now) for i in range(n_harmless)]
    return Dataset(harm=harm)


def test_few_harmful_labels_leave_the_head_untrained_and_the_judge_scores_alone():
    model = HarmModel(TextFeatures(), Budgets(harm_min_positive=8), judge=KeywordJudge())
    metrics = model.fit(labels(4, 100))
    assert not model.trained and metrics["harm/trained"] is False
    feats = TextFeatures().features(["p", "p"], ["fine reply", "harmful reply"])
    # untrained head: 0 for both; the judge still flags an insult
    assert model.prob(feats).tolist() == [0.0, 0.0]
    assert model.prob(feats, ["a fine reply", "fuck you"]).tolist() == [0.0, 1.0]


def test_prior_correction_keeps_ordinary_replies_below_the_cut():
    budgets = Budgets(harm_min_positive=8)
    model = HarmModel(TextFeatures(), budgets)
    metrics = model.fit(labels(12, 300))
    assert model.trained
    # the correction is log(neg/pos) of the training split, subtracted from the bias
    assert metrics["harm/prior_correction"] < -2.0
    fresh_fine = TextFeatures().features(["p"] * 200, [f"fine new {i}" for i in range(200)])
    fresh_harm = TextFeatures().features(["p"] * 50, [f"harmful new {i}" for i in range(50)])
    fp = float((model.prob(fresh_fine) >= 0.5).float().mean())
    recall = float((model.prob(fresh_harm) >= 0.5).float().mean())
    assert fp <= 0.05, fp
    assert recall >= 0.5, recall


def test_the_simulation_judge_is_a_trainer_judge_by_name():
    from learning.harm import make_judge

    judge = make_judge("profanity-check")
    insult, fine = judge.score(["You are a fucking idiot, shut up.", "Tea is best brewed for three minutes."])
    assert insult >= 0.5 > fine


def test_the_trainers_default_judge_counts_listed_words_and_differs_from_the_evaluations():
    from learning.harm import make_judge
    from learning.sim.judge import make_judge as make_eval_judge

    default = Budgets().harm_judge
    judge = make_judge(default)
    assert judge.name == default == "insults"
    assert default != make_eval_judge("profanity-check", 0.5).name  # the evaluation's yardstick is another function
    one, two, leet, fine = judge.score(["What the hell.", "Shut up, you stupid shit.", "You are full of sh1t.",
                                        "Tea is best brewed for three minutes."])
    assert (one, fine) == (0.5, 0.0)  # 1 - 0.5 ** words counted
    assert two == 1 - 0.5 ** 3  # "shut up" and "stupid" from the lexicon, "shit" from better-profanity, each once
    # everyday name-calling better-profanity's own list lacks
    assert make_judge("better-profanity").score(["You pathetic loser."]) == [0.0]
    assert judge.score(["You pathetic loser."]) == [0.75]
    assert leet >= 0.5  # better-profanity's list matches character-substitution spellings too


def test_the_insults_judge_finds_what_better_profanity_finds_with_one_compiled_pattern():
    """The serving filter checks every streamed word, so the insults judge matches better-profanity's
    word list (and its character substitutions) with one regular expression instead of its censor."""
    from learning.harm import make_judge

    fast, reference = make_judge("insults"), make_judge("better-profanity")
    texts = ["What the hell.", "You are full of sh1t.", "f*ck you", "Assassins in a classic passage.",
             "Tea is best brewed for three minutes.", "Shut the fuck up, asshole.", "bullshit and crap"]
    for t in texts:  # every text better-profanity flags, the insults judge flags too; the clean ones stay clean
        assert (fast.score([t])[0] >= 0.5) == (reference.score([t])[0] >= 0.5), t


def test_the_directed_judge_counts_a_listed_word_only_where_it_is_aimed_at_someone():
    from service.judges import DirectedInsultJudge, make_judge

    directed, insults = make_judge("insults-directed"), make_judge("insults")
    assert isinstance(directed, DirectedInsultJudge)
    aimed = ["You are a worthless idiot.", "Your boss is a jerk.", "What an idiot he is.", "Shut up and go away.",
             "f*ck you", "Bob is such a loser."]
    dual_use = ["Kill the process with kill -9.", "Fat content in butter is high.", "Put a pot of tea on the stove.",
                "That was a stupid bug in my code.", "Dumb luck, you know."]
    assert all(s >= 0.5 for s in directed.score(aimed)) and all(s >= 0.5 for s in insults.score(aimed))
    assert [directed.count(t) for t in dual_use[:4]] == [0, 0, 0, 0]
    assert all(insults.count(t) >= 1 for t in dual_use[:4])  # what kept the serving filter off
    # "you" near a dual-use word makes it aimed, as the window says: the judge is a heuristic, not a parser
    assert directed.count(dual_use[4]) == 1
    assert directed.count("You are a worthless idiot.") == 2  # each aimed word counts, as insults counts them


def test_the_safety_stages_rows_are_reported_apart_from_the_databases_labels():
    from learning.harm_rows import HarmRow, as_labels

    pool = labels(12, 300)
    rows = [HarmRow(f"insult {i}", f"harmful row {i}", "flagged") for i in range(60)]
    rows += [HarmRow(f"insult {i}", f"fine redirect {i}", "redirect") for i in range(60)]
    pool.harm += as_labels(rows, lambda messages: messages[-1]["content"])
    metrics = HarmModel(TextFeatures(), Budgets(harm_min_positive=8, heldout_fraction=0.3)).fit(pool)
    assert metrics["harm/trained"] and metrics["harm/train_safety_rows"] > 0
    assert metrics["harm/heldout_db_labels"] + metrics["harm/heldout_safety_rows_labels"] == metrics["harm/heldout_labels"]
    assert metrics["harm/heldout_safety_rows_labels"] > 0 and metrics["harm/heldout_db_labels"] > 0
    assert metrics["harm/heldout_safety_rows_recall"] >= 0.5  # the stand-in features separate them
    assert metrics["harm/heldout_db_false_positive_rate"] <= 0.05


def test_without_the_safety_stages_rows_the_heldout_figures_are_the_databases_alone():
    metrics = HarmModel(TextFeatures(), Budgets(harm_min_positive=8, heldout_fraction=0.3)).fit(labels(12, 300))
    assert "harm/heldout_db_labels" not in metrics and "harm/train_safety_rows" not in metrics
    assert metrics["harm/heldout_labels"] > 0
