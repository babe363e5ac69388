"""``assistant reward-curve`` on stored replies: the production reward head learns a clear
preference from profile-labelled pairs and generalises to replies it never saw."""

import argparse
import json


from learning.sim.reward_curve import add_reward_curve_arguments, main_reward_curve
from service.db import init_db, make_engine
from tests.learning.conftest import Seeder

TOPICS = ["tea", "rain", "bread", "cats", "maps", "music", "trees", "boats", "stars", "shoes"]


def test_curve_on_stored_replies(make_settings, capsys):
    settings = make_settings()
    engine = make_engine(settings)
    init_db(engine)
    seeder = Seeder(engine)
    uid = seeder.user("someone")
    for i in range(60):
        topic = TOPICS[i % len(TOPICS)]
        long = (f"Here is a long answer about {topic}. " + f"It covers the history of {topic}, how {topic} "
                f"are made, and many details about {topic} that people often ask about. " * 3)
        seeder.turn(uid, f"Tell me about {topic} ({i}).", [f"In short, {topic} are lovely things." if i % 2 else long])
    engine.dispose()

    p = argparse.ArgumentParser()
    add_reward_curve_arguments(p)
    args = p.parse_args(["--profiles", "concise,detailed", "--sizes", "4,40", "--test-pairs", "40"])
    paths = main_reward_curve(args, settings)

    report = json.loads(paths["json"].read_text())
    assert paths["plot"].stat().st_size > 0 and "| concise |" in paths["markdown"].read_text()
    assert report["replies"]["train_pool"] + report["replies"]["test_pool"] == 60
    for name in ("concise", "detailed"):
        entry = report["profiles"][name]
        assert entry["test_pairs"] == 40 and entry["sizes"]["40"]["train_pairs"] == 40
        # short vs long is the whole difference between these replies: 40 pairs are plenty
        assert entry["sizes"]["40"]["accuracy"] >= 0.8, entry
    # "longer wins" is right for the detailed profile and wrong for the concise one
    assert report["profiles"]["detailed"]["length_baseline_accuracy"] > 0.8
    assert report["profiles"]["concise"]["length_baseline_accuracy"] < 0.2
    assert "reward curve:" in capsys.readouterr().out


def test_curve_on_sibling_pairs_with_synthetic_raters(make_settings, monkeypatch):
    """Issue 26, item 2: the accuracy that matters is on replies to the same prompt, and the text reward
    is tuned on raters a program draws, never on the evaluation's profiles."""
    monkeypatch.setenv("ASSISTANT_REWARD_TEXT_FEATURES", "128")
    settings = make_settings()
    engine = make_engine(settings)
    init_db(engine)
    seeder = Seeder(engine)
    uid = seeder.user("someone")
    for i, topic in enumerate(TOPICS * 2):
        seeder.turn(uid, f"Tell me about {topic}.", [
            f"In short, {topic} are lovely.", f"Honestly, {topic} are great things to have around!",
            f"{topic.capitalize()} are a long story. " * 4 + f"People like {topic} a lot.",
            f"Well, {topic}: colourful, useful and cheap."])
    engine.dispose()

    p = argparse.ArgumentParser()
    add_reward_curve_arguments(p)
    args = p.parse_args(["--profiles", "concise", "--sizes", "30", "--test-pairs", "40", "--siblings", "--raters", "6"])
    report = json.loads(main_reward_curve(args, settings)["json"].read_text())
    assert report["pairs"].startswith("sibling") and report["budgets"]["reward_text_features"] == 128
    assert report["replies"]["train_pool"] % 4 == 0  # split by prompt: a prompt's four replies stay together
    assert report["profiles"]["concise"]["sizes"]["30"]["accuracy"] >= 0.8
    raters = report["synthetic_raters"]
    assert raters["count"] == 6 and sum(name.startswith("rater") for name in report["profiles"]) == 6
    summary = raters["sizes"]["30"]
    assert summary["raters"] >= 1 and summary["accuracy"][1] <= summary["accuracy"][0] <= summary["accuracy"][2]
