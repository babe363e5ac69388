"""Building pairs, thumbs and harm labels from seeded rows; the per-user cap; provenance."""

from datetime import timedelta

from sqlmodel import Session, select

from service.models import Feedback, Rating, TrainingSnapshot, User

from learning.config import Budgets
from learning.data import build_dataset, recent_prompts, save_snapshot, shared_pool
from learning.harm import KeywordJudge, judge_flagger

from tests.learning.conftest import seed_feedback


def render(messages):
    """A stand-in chat template: one line per turn, then the assistant header."""
    return "".join(f"<{m['role']}>{m['content']}\n" for m in messages) + "<assistant>"


def build(db, **kw):
    with Session(db) as s:
        return build_dataset(s, render, Budgets(), **kw)


def test_rankings_give_every_ordered_pair_and_thumbs_do_not_duplicate_them(db, seeder):
    uid = seeder.user("alice")
    good, mid, bad = seeder.turn(uid, "hi?", ["good", "mid", "bad"])
    rid = seeder.rank(uid, [good, mid, bad])
    f_up = seeder.rate(uid, good, "up")
    f_down = seeder.rate(uid, bad, "down", ["offensive", "inaccurate"])

    ds = build(db)

    assert {(p.chosen, p.rejected) for p in ds.pairs} == {("good", "mid"), ("good", "bad"), ("mid", "bad")}
    assert all(p.prompt == "<user>hi?\n<assistant>" for p in ds.pairs)
    assert {(p.reply, p.label) for p in ds.points} == {("good", 1), ("bad", 0)}
    assert {(h.reply, h.harmful) for h in ds.harm} == {("good", 0), ("bad", 1)}  # "offensive" is a harm reason
    assert ds.feedback_ids == sorted([f_up, f_down]) and ds.ranking_ids == [rid]


def test_sibling_thumbs_that_differ_make_a_pair(db, seeder):
    uid = seeder.user("bob")
    a, b, c = seeder.turn(uid, "q", ["liked", "disliked", "unrated"])
    seeder.rate(uid, a, "up")
    fd = seeder.rate(uid, b, "down", ["too_long"])
    ds = build(db)
    assert [(p.chosen, p.rejected) for p in ds.pairs] == [("liked", "disliked")]
    assert ds.pairs[0].source.endswith(f",{fd}")
    assert [h.harmful for h in ds.harm] == [0, 0]  # too_long is not harm


def test_prompt_follows_the_parent_chain_only(db, seeder):
    uid = seeder.user("carol")
    history = [("user", "first question"), ("assistant", "first answer")]
    (reply,) = seeder.turn(uid, "follow-up", ["second answer"], history=history)
    seeder.turn(uid, "an unrelated chat", ["other"])
    seeder.rate(uid, reply, "up")
    ds = build(db)
    assert ds.points[0].prompt == "<user>first question\n<assistant>first answer\n<user>follow-up\n<assistant>"
    with Session(db) as s:
        prompts = recent_prompts(s, render, uid, 10)
    assert "<user>first question\n<assistant>first answer\n<user>follow-up\n<assistant>" in prompts


def test_feedback_on_someone_elses_reply_is_ignored(db, seeder):
    owner, other = seeder.user("owner"), seeder.user("mallory")
    (reply,) = seeder.turn(owner, "q", ["a reply"])
    seeder.rate(other, reply, "down", ["harmful"])
    ds = build(db)
    assert ds.points == [] and ds.harm == [] and ds.feedback_ids == []


def test_replies_a_client_wrote_never_reach_training(db, seeder):
    """Issue 12, finding 2: an OpenAI client's own "assistant" turns are context, not model replies;
    rated anyway (rows from before migration 0004, or a direct insert), they add no label."""
    uid = seeder.user("writer")
    written = seeder.turn(uid, "q", ["I wrote this", "and this"], origin="client")
    seeder.rate(uid, written[0], "up")
    seeder.rate(uid, written[1], "down", ["harmful"])
    seeder.rank(uid, written)
    ds = build(db)
    assert ds.pairs == [] and ds.points == [] and ds.harm == [] and ds.feedback_ids == []


def test_accounts_waiting_for_approval_add_no_labels(db, seeder):
    """Issue 12, finding 3: with ASSISTANT_REGISTRATION=approval a new account counts only once approved."""
    waiting, approved = seeder.user("sockpuppet", approved=False), seeder.user("regular")
    for uid in (waiting, approved):
        a, b = seeder.turn(uid, "q", ["first", "second"])
        seeder.rank(uid, [a, b])
        seeder.rate(uid, b, "down", ["harmful"])
    ds = build(db)
    assert {p.user_id for p in ds.pairs} | {p.user_id for p in ds.points} | {h.user_id for h in ds.harm} == {approved}


def test_one_user_cannot_flood_the_shared_pool(db, seeder):
    spammer, honest = seeder.user("spammer"), seeder.user("honest")
    for i in range(10):
        (m,) = seeder.turn(spammer, f"q{i}", [f"spam {i}"])
        fid = seeder.rate(spammer, m, "up")
        with Session(db) as s:  # make the order of updates explicit: later i = newer
            f = s.get(Feedback, fid)
            f.updated_at = f.updated_at + timedelta(seconds=i)
            s.add(f)
            s.commit()
    (m,) = seeder.turn(honest, "q", ["fine"])
    seeder.rate(honest, m, "down")

    ds = build(db)
    pool = shared_pool(ds, Budgets(global_max_items_per_user=3))

    assert ds.label_count(spammer) == 10  # the spammer's own models still see everything
    assert sorted(p.reply for p in pool.points if p.user_id == spammer) == ["spam 7", "spam 8", "spam 9"]
    assert [p.reply for p in pool.points if p.user_id == honest] == ["fine"]
    assert sum(h.user_id == spammer for h in pool.harm) == 3


def test_one_account_cannot_define_what_the_shared_harm_head_calls_harmful(db, seeder):
    censor, honest = seeder.user("censor"), seeder.user("honest")
    for i in range(20):  # flags every reply about one topic as harmful
        (m,) = seeder.turn(censor, f"Tell me about unions {i}", [f"Unions bargain collectively {i}."])
        seeder.rate(censor, m, "down", ["harmful"])
    for i in range(6):
        (m,) = seeder.turn(honest, f"Roast me {i}", [f"You are a worthless idiot {i}."])
        seeder.rate(honest, m, "down", ["harmful"])

    pool = shared_pool(build(db), Budgets(pool_harm_max_share=0.25, pool_harm_user_floor=4))
    positives = [h for h in pool.harm if h.harmful]
    mine = sum(h.user_id == censor for h in positives)
    # capped against everyone else's positives: 0.25 / 0.75 * 6 = 2, raised to the floor of 4
    assert mine == 4 and sum(h.user_id == honest for h in positives) == 6
    # the honest user's 6 are within their own cap (0.25 / 0.75 * 20 = 6): nothing of theirs is dropped
    assert len(shared_pool(build(db), Budgets(pool_harm_max_share=1.0)).harm) == 26  # the cap off


def test_no_account_steers_the_shared_pairs_and_thumbs_beyond_its_share(db, seeder):
    """Issue 28, M2: the pool's cap was absolute (200 per kind); one busy account could still make
    most of the shared pairs. Now each kind is capped as a share of everyone else's."""
    busy, ann, bob = seeder.user("busy"), seeder.user("ann"), seeder.user("bob")
    for i in range(12):
        a, b = seeder.turn(busy, f"b{i}", [f"busy good {i}", f"busy bad {i}"])
        seeder.rank(busy, [a, b])
        seeder.rate(busy, a, "up")
    for uid, name in ((ann, "ann"), (bob, "bob")):
        for i in range(2):
            a, b = seeder.turn(uid, f"{name}{i}", [f"{name} good {i}", f"{name} bad {i}"])
            seeder.rank(uid, [a, b])
            seeder.rate(uid, a, "up")
    pool = shared_pool(build(db), Budgets(pool_max_share=0.5, pool_user_floor=2))
    # busy's cap: 0.5 / 0.5 * the others' 4 = 4 pairs and 4 thumbs, their newest; the others keep theirs
    assert [p.chosen for p in pool.pairs if p.user_id == busy] == [f"busy good {i}" for i in range(8, 12)]
    assert sum(p.user_id == busy for p in pool.points) == 4 and sum(p.user_id != busy for p in pool.points) == 4
    assert sum(p.user_id == ann for p in pool.pairs) == 2
    assert len(shared_pool(build(db), Budgets(pool_max_share=1.0)).pairs) == 16  # the cap off


def test_the_audit_sees_every_favoured_reply_however_many_rows_came_after(db, seeder, monkeypatch):
    import learning.data as data
    from learning.data import pool_audit

    monkeypatch.setattr(data, "JUDGE_SCAN_LIMIT", 3)  # the newest-rows window, made small
    troll = seeder.user("troll")
    for i in range(4):
        (nasty,) = seeder.turn(troll, f"q{i}", [f"Fuck you {i}, do it yourself."])
        seeder.rate(troll, nasty, "up")
    for i in range(5):  # afterwards, client-written rows (a /v1 history) and newer generated replies pile up
        seeder.turn(troll, f"c{i}", [f"Fuck you client {i}."], origin="client")
        seeder.turn(troll, f"n{i}", [f"Sure {i}."])
    ds = build(db, judge_flags=judge_flagger(KeywordJudge(), 0.5))
    audit = pool_audit(ds, Budgets())
    assert audit[troll]["favoured_flagged"] == 4 and audit[troll]["excluded"]
    assert not any("client" in h.reply for h in ds.harm)  # client-written text is never judged into labels


def test_snapshot_records_ids_and_a_hash_that_tracks_content(db, seeder):
    uid = seed_feedback(seeder, n_turns=2)
    ds = build(db)
    again = build(db)
    assert ds.sha256 == again.sha256 and len(ds.sha256) == 64

    with Session(db) as s:
        row = save_snapshot(s, ds, run_id=None)
        stored = s.exec(select(TrainingSnapshot)).one()
        all_feedback = s.exec(select(Feedback.id)).all()
    assert stored.id == row.id and stored.sha256 == ds.sha256
    assert stored.feedback_ids == sorted(all_feedback) and len(stored.ranking_ids) == 2
    assert stored.stats["pairs"] == len(ds.pairs) and stored.stats["labels_per_user"][str(uid)] == ds.label_count(uid)

    with Session(db) as s:  # flip one thumb: same ids, different content
        f = s.get(Feedback, all_feedback[0])
        f.rating = Rating.down if f.rating == Rating.up else Rating.up
        s.add(f)
        s.commit()
    assert build(db).sha256 != ds.sha256


def test_judge_flags_become_harm_labels_of_no_user(db, seeder):
    uid = seeder.user("dave")
    nice, nasty = seeder.turn(uid, "q", ["Happy to help!", "Fuck you, do it yourself."])
    seeder.rate(uid, nice, "up")
    ds = build(db, judge_flags=judge_flagger(KeywordJudge(), 0.5))
    flagged = [h for h in ds.harm if h.user_id is None]
    assert [(h.reply, h.harmful) for h in flagged] == [("Fuck you, do it yourself.", 1)]


def test_users_who_upvote_what_the_harm_judge_flags_are_kept_out_of_the_shared_pool(db, seeder):
    from learning.data import pool_audit

    troll, honest = seeder.user("troll"), seeder.user("honest")
    for i in range(4):  # 4 of the troll's 5 thumbs-up are on replies the keyword judge flags
        nasty, fine = seeder.turn(troll, f"q{i}", [f"Fuck you {i}, do it yourself.", f"Sure, here is how {i}."])
        seeder.rate(troll, nasty, "up")
        seeder.rate(troll, fine, "down")
    (ok,) = seeder.turn(troll, "q9", ["Happy to help."])
    seeder.rate(troll, ok, "up")
    for i in range(3):
        nasty, fine = seeder.turn(honest, f"h{i}", [f"Fuck you {i}.", f"Glad to help {i}."])
        seeder.rate(honest, fine, "up")
        seeder.rate(honest, nasty, "down", ["harmful"])
    (slip,) = seeder.turn(honest, "h9", ["Fuck you, that is a good question."])  # one upvote on a flagged reply: no outlier
    seeder.rate(honest, slip, "up")

    ds = build(db, judge_flags=judge_flagger(KeywordJudge(), 0.5))
    audit = pool_audit(ds, Budgets())
    assert audit[troll]["thumbs_up"] == 5 and audit[troll]["favoured"] == 5 and audit[troll]["favoured_flagged"] == 4
    assert audit[troll]["excluded"] and "4 of the 5 replies they favoured" in audit[troll]["reason"]
    assert not audit[honest]["excluded"] and audit[honest]["harm_flags"] == 3
    pool = shared_pool(ds, Budgets(), excluded=[u for u, row in audit.items() if row["excluded"]])
    assert not any(x.user_id == troll for x in pool.pairs + pool.points + pool.harm)  # nothing of the troll's
    assert any(h.user_id is None for h in pool.harm) and any(p.user_id == honest for p in pool.points)
    assert ds.label_count(troll) == 13  # their own models still see all of their labels (4 pairs + 9 thumbs)
    # the threshold is a setting; 0 turns the exclusion off; without a judge nothing is flagged
    assert not pool_audit(ds, Budgets(pool_outlier_min_flagged=0))[troll]["excluded"]
    assert not pool_audit(ds, Budgets(pool_outlier_min_flagged=5))[troll]["excluded"]
    assert not pool_audit(build(db), Budgets())[troll]["excluded"]
    # ranking the flagged reply first counts too, not only thumbs-up
    ranker = seeder.user("ranker")
    for i in range(3):
        nasty, fine = seeder.turn(ranker, f"r{i}", [f"Fuck you {i}.", f"Here you go {i}."])
        seeder.rank(ranker, [nasty, fine])
    ranked = pool_audit(build(db, judge_flags=judge_flagger(KeywordJudge(), 0.5)), Budgets())[ranker]
    assert ranked["thumbs_up"] == 0 and ranked["favoured_flagged"] == 3 and ranked["excluded"]


def test_pool_audit_command_shows_who_the_next_run_keeps_out(seeder, settings, model_data_dir):
    import os
    import subprocess
    import sys
    from pathlib import Path

    (settings.data_dir / "models").symlink_to(model_data_dir / "models")
    troll = seeder.user("troll")
    for i in range(3):
        (nasty,) = seeder.turn(troll, f"q{i}", [f"Fuck you {i}."])
        seeder.rate(troll, nasty, "up")
    env = {**os.environ, "ASSISTANT_DATA_DIR": str(settings.data_dir), "ASSISTANT_DEV_MODE": "1", "HF_HUB_OFFLINE": "1",
           "ASSISTANT_HARM_JUDGE": "keywords"}
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "service.cli", "pool-audit"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("troll"))
    assert "KEPT OUT: 3 of the 3 replies they favoured (thumbs-up or ranked first) are flagged" in line
    off = subprocess.run([sys.executable, "-m", "service.cli", "pool-audit"], cwd=repo, capture_output=True, text=True,
                         timeout=120, env={**env, "ASSISTANT_HARM_JUDGE": "none"})
    assert "no harm judge configured" in off.stdout and "KEPT OUT" not in off.stdout


def test_scores_order_siblings_that_thumbs_alone_do_not(db, seeder):
    """Issue 31: Open WebUI's 1-10 score was dropped; two thumbs-up scored 9 and 4 made no pair."""
    uid = seeder.user("alice")
    a, b, c = seeder.turn(uid, "hi?", ["nine", "four", "bad"])
    seeder.rate(uid, a, "up", score=9)
    seeder.rate(uid, b, "up", score=4)
    seeder.rate(uid, c, "down", score=4)
    pairs = {(p.chosen, p.rejected): p.source.split(":")[0] for p in build(db).pairs}
    # up-vs-down decides first; the score orders the two thumbs-up; equal scores decide nothing
    assert pairs == {("nine", "bad"): "feedback", ("four", "bad"): "feedback", ("nine", "four"): "score"}


def test_the_global_adapters_prompts_come_from_every_user_in_turns_and_none_from_excluded_ones(db, seeder):
    """Issue 28, L5: the global gate took its prompts from the lowest user ids, and users kept out of
    the shared pool still trained the global adapter through their prompts. M8: the operator's flag."""
    from learning.data import operator_excluded, pooled_prompts

    ann, bob, eve, wait = seeder.user("ann"), seeder.user("bob"), seeder.user("eve"), seeder.user("wait", approved=False)
    for uid, name in ((ann, "ann"), (bob, "bob"), (eve, "eve"), (wait, "wait")):
        for i in range(3):
            seeder.turn(uid, f"{name} question {i}", ["a reply"])
    with Session(db) as s:
        assert operator_excluded(s) == set()
        got = pooled_prompts(s, render, 2, excluded=[eve])
        eve_row = s.get(User, eve)
        eve_row.shared_pool_excluded = True
        s.add(eve_row)
        s.commit()
        assert operator_excluded(s) == {eve}
    owners = [p.split(" question")[0].split(">")[-1] for p in got]
    assert owners == ["ann", "bob", "ann", "bob"]  # in turns, newest first; eve excluded, wait not approved
    assert "ann question 2" in got[0]


def test_the_export_holds_exactly_the_pairs_and_thumbs_training_learns_from(db, seeder):
    """Issue 29, item 1: training and the TRL export read labels by different rules (sibling thumbs
    pairs, scores, identical texts, a judge's feedback rows), so DPO on the export trained on another
    pair set than the product's own reward model. Both now read ``service.labels``."""
    from service import exports
    from service.labels import approved_user_ids

    ann, bob, wait = seeder.user("ann"), seeder.user("bob"), seeder.user("wait", approved=False)
    good, mid, bad = seeder.turn(ann, "rank these", ["good", "mid", "bad"])
    seeder.rank(ann, [good, mid, bad])
    seeder.rate(ann, good, "up")
    seeder.rate(ann, bad, "down", ["offensive"])
    up, down, same = seeder.turn(ann, "thumbs only", ["liked", "disliked", "liked"])  # two identical texts
    seeder.rate(ann, up, "up", score=8)
    seeder.rate(ann, down, "down")
    seeder.rate(ann, same, "up", score=3)  # identical to `up`: no pair between them, whatever the scores say
    hi, lo = seeder.turn(bob, "scores", ["nine", "four"])
    seeder.rate(bob, hi, "up", score=9)
    seeder.rate(bob, lo, "up", score=4)
    seeder.rank(bob, [hi, lo])  # the ranking decides the pair first; the scores add nothing
    (judged,) = seeder.turn(bob, "a judge rated", ["judged reply"])
    with Session(db) as s:
        s.add(Feedback(user_id=bob, message_id=judged, rating=Rating.down, reasons=["harmful"], source="judge:test"))
        s.commit()
    a, b = seeder.turn(wait, "not approved", ["x", "y"])
    seeder.rank(wait, [a, b])

    ds = build(db)
    with Session(db) as s:
        ids = approved_user_ids(s)
        pref = list(exports.preference_rows(s, user_ids=ids))
        kto = list(exports.kto_rows(s, user_ids=ids))
    assert {(p.chosen_id, p.rejected_id, p.source) for p in ds.pairs} == {
        (r["chosen_id"], r["rejected_id"], r["source"]) for r in pref}
    assert {(p.message_id, p.feedback_id, p.label) for p in ds.points} == {
        (r["message_id"], r["feedback_id"], int(r["label"])) for r in kto}
    assert len(pref) == len(ds.pairs) == 3 + 2 + 1  # ranking 3; liked > disliked twice; bob's ranking
    assert len(kto) == len(ds.points) == 2 + 3 + 2  # the judge's row and the waiting account's ranking: neither
    assert {r["source"].split(":")[0] for r in pref} == {"ranking", "feedback"}
    assert all(r["chosen"][0]["content"] != r["rejected"][0]["content"] for r in pref)
