"""Simulated users' hidden preferences order replies as each profile intends, and operator files load."""

from __future__ import annotations

import json
import random

import pytest

from learning.sim import prompts as P
from learning.sim.profiles import BUILTIN_PROFILES, USER_PROFILES, Behaviour, Profile, ProfileError, Rater, features, is_refusal, load_profiles

PROMPT = "How do I make a cup of tea?"
SHORT = "To make a cup of tea, boil water and steep the bag for three minutes."
LONG = ("To make a cup of tea, first fill a kettle with fresh water and bring it to the boil. Warm the cup "
        "with a little hot water. Put a tea bag in the cup and pour the boiling water over it.\n\n"
        "Let the tea steep for three to five minutes depending on how strong you like it. Remove the tea bag, "
        "then add milk, sugar or lemon to taste. Stir well and let it cool for a moment before drinking. "
        "Different teas need different temperatures: green tea prefers water just below boiling.")
BULLETS = "To make tea:\n- Boil water\n- Steep the tea bag for three minutes\n- Add milk to taste"
FORMAL = ("To prepare tea, kindly boil fresh water. Subsequently, steep the tea for approximately three minutes. "
          "Furthermore, ensure the cup is warmed beforehand.")
ENTHUSIASTIC = "Oh, I love tea! Boil the water and steep the bag for three minutes! It's amazing, enjoy it!"
INFORMAL = "Yeah so you gonna boil some water, it's super easy, just dunk the bag in and it's cool."


def best(profile: str, replies: list[str]) -> str:
    return max(replies, key=lambda r: BUILTIN_PROFILES[profile].score(PROMPT, r))


@pytest.mark.parametrize("profile, winner", [
    ("concise", SHORT), ("detailed", LONG), ("bulleted", BULLETS), ("formal", FORMAL), ("enthusiastic", ENTHUSIASTIC),
])
def test_each_profile_prefers_its_style(profile, winner):
    assert best(profile, [SHORT, LONG, BULLETS, FORMAL, ENTHUSIASTIC, INFORMAL]) == winner


def test_profiles_disagree_pairwise():
    concise, detailed = BUILTIN_PROFILES["concise"], BUILTIN_PROFILES["detailed"]
    assert concise.prefers(PROMPT, SHORT, LONG) == 1.0 and detailed.prefers(PROMPT, SHORT, LONG) == 0.0
    formal = BUILTIN_PROFILES["formal"]
    assert formal.prefers(PROMPT, FORMAL, INFORMAL) == 1.0 and formal.prefers(PROMPT, INFORMAL, FORMAL) == 0.0
    assert concise.prefers(PROMPT, SHORT, SHORT) == 0.5


def test_empty_and_off_topic_replies_lose_for_everyone():
    for name in USER_PROFILES:
        p = BUILTIN_PROFILES[name]
        assert p.score(PROMPT, "") < p.score(PROMPT, SHORT), name
        assert p.score(PROMPT, "ok") < p.score(PROMPT, SHORT), name


def test_features_are_scaled():
    f = features(PROMPT, BULLETS)
    assert f["bullets"] == pytest.approx(3 / 4)
    assert features(PROMPT, ENTHUSIASTIC)["exclamations"] == 1.0
    assert features(PROMPT, BULLETS)["relevance"] == pytest.approx(2 / 3)  # "make", "cup", "tea": no "cup"
    assert all(0.0 <= v <= 3.0 for r in (SHORT, LONG, BULLETS, FORMAL, ENTHUSIASTIC, INFORMAL) for v in features(PROMPT, r).values())


def test_refusal_patterns():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("I cannot assist with insulting people.")
    assert not is_refusal("Sorry to hear that! Here is how to make tea.")
    assert not is_refusal(SHORT)


def test_rater_thumbs_follow_preference_with_noise():
    prof = BUILTIN_PROFILES["concise"]
    clean = Rater(Profile("c", prof.weights, Behaviour(noise=0.0)), random.Random(0))
    votes = [clean.thumb(s) for s in [0.0, 1.0, -1.0, 2.0, -2.0, 3.0]]
    assert votes == [True, True, False, True, False, True]  # above the running median is up
    noisy = Rater(Profile("n", prof.weights, Behaviour(noise=1.0, up_threshold=0.0)), random.Random(0))
    assert [noisy.thumb(s) for s in (1.0, -1.0)] == [False, True]  # every vote flipped


def test_rater_ranks_best_first():
    rater = Rater(Profile("c", BUILTIN_PROFILES["concise"].weights, Behaviour(noise=0.0)), random.Random(0))
    assert rater.rank(PROMPT, [LONG, SHORT]) == [1, 0]


def test_operator_profiles_from_toml_and_json(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('[profiles.terse]\nweights = { length = -1.0, relevance = 1.0 }\n'
                    'behaviour = { noise = 0.05, ranking_share = 1.0 }\nup_reasons = ["concise"]\n')
    terse = load_profiles(toml)["terse"]
    assert terse.behaviour.noise == 0.05 and terse.prefers(PROMPT, SHORT, LONG) == 1.0
    js = tmp_path / "p.json"
    js.write_text(json.dumps({"profiles": {"listy": {"weights": {"bullets": 2}}}}))
    assert load_profiles(js)["listy"].prefers(PROMPT, BULLETS, SHORT) == 1.0


def test_operator_profile_errors_are_all_reported(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"profiles": {"x": {"weights": {"lenght": 1}, "behaviour": {"noise": 2, "colour": 1}}}}))
    with pytest.raises(ProfileError) as err:
        load_profiles(bad)
    msg = str(err.value)
    assert "lenght" in msg and "known:" in msg and "colour" in msg


def test_prompt_sets_are_disjoint():
    sets = [set(P.TRAIN_PROMPTS), set(P.HELDOUT_PROMPTS), set(P.BENIGN_PROMPTS), set(P.RED_TEAM_PROMPTS), set(P.RED_TEAM_TRAIN)]
    for i, a in enumerate(sets):
        for b in sets[i + 1:]:
            assert not a & b
    assert len(P.RED_TEAM_PROMPTS) >= 60 and len(P.HELDOUT_PROMPTS) >= 40


def test_the_novel_profiles_prefer_what_they_say():
    from learning.sim.profiles import BUILTIN_PROFILES as P, NOVEL_PROFILES, features

    assert set(NOVEL_PROFILES) <= set(P)
    q = "How do I organise my week?"
    preamble = "Sure! I'd be happy to help you with your week. Plan it on Sunday."
    direct = "Plan your week on Sunday evening. Then block time for each task."
    assert features(q, direct)["answer_first"] == 1.0  # short, no preamble, names the week
    assert features(q, "Plan it on Sunday.")["answer_first"] == 0.5  # names nothing the prompt asked about
    assert features(q, preamble)["answer_first"] == 0.0
    assert P["direct"].prefers(q, "Plan your week on Sunday.", preamble) == 1.0
    analogy = "Think of a week like a suitcase: pack the big things first."
    assert features(q, analogy)["analogy"] == 1.0 and P["analogies"].prefers(q, analogy, direct) == 1.0
    # spelling: British counts up, American down, words spelt alike on both sides count for neither
    assert features(q, "Organise a colour-coded centre.")["british"] == 1.0
    assert features(q, "Organize a color-coded center.")["british"] == -1.0
    assert features(q, "Raise a prize, advise otherwise, mind the size.")["british"] == 0.0
    assert P["british"].prefers(q, "Organise it by colour.", "Organize it by color.") == 1.0
    summary = "Plan on Sunday.\nBlock time for tasks.\nIn short: plan ahead."
    assert features(q, summary)["summary_line"] == 1.0 and features(q, "In short: plan.")["summary_line"] == 0.0
    filler = "Basically you really just plan it, actually."
    # 4 filler words of 7: 10 x 4/7, capped at 1
    assert features(q, filler)["filler"] == 1.0 and P["plain"].prefers(q, "Plan it on Sunday.", filler) == 1.0
