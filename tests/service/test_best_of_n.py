"""Personal best-of-n (issue 26): the chooser, the stored reward it chooses by, and the reply as served.

Unit tests on ``ReplyChoice`` with hand-made candidates (token ids are character codes, so a
candidate's text is readable); the reward with hand-computed expectations; on the real model, a
best-of-1 reply chosen block by block equals the one request's greedy reply, token for token, and
streams in block order; through the API, a user with an adapter and a stored reward gets a reply
recorded with its choices, and none when best-of-n cannot apply.
"""

from __future__ import annotations

import asyncio
import math

import pytest
import torch
from sqlmodel import Session, select

from service import adapter_store
from service import traits as T
from service.best_of_n import Candidate, ChoiceRun, ReplyChoice, draw_seed, summarise_choices
from service.engine.base import EndEvent, GenerationRequest, RequestStream, SamplingParams, TokenEvent
from service.models import AdapterStatus, Message
from service.reply_reward import Preference, ReplyReward
from tests.service.conftest import chat_turn, signup


def _text(ids: list[int]) -> str:
    return "".join(chr(i) for i in ids)


def _ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def _choice(n: int = 3, block: int = 4, max_new_tokens: int = 10, harmful_word: str = "bad", first_block: int = 0) -> ReplyChoice:
    return ReplyChoice(prompt="q", n=n, block=block, first_block=first_block, max_new_tokens=max_new_tokens, seed=1234,
                       score=lambda prompt, texts: [t.count("x") for t in texts],
                       harmful=lambda texts: [harmful_word in t for t in texts], decode=_text)


# --- the chooser ------------------------------------------------------------------------------------


def test_draws_cover_the_reply_in_blocks_with_distinct_seeds_and_the_first_is_the_request_seed():
    c = _choice(n=3, block=4, max_new_tokens=10)
    first = c.draws()
    assert [d.max_new_tokens for d in first] == [4, 4, 4]
    assert first[0].seed == 1234 == draw_seed(1234, 0, 0)  # best-of-1 over whole replies = one request
    assert len({d.seed for d in first}) == 3
    c.choose([Candidate(_ids("aaaa"), False)] * 3)
    c.choose([Candidate(_ids("bbbb"), False)] * 3)
    assert [d.max_new_tokens for d in c.draws()] == [2, 2, 2]  # 10 = 4 + 4 + 2
    assert len({d.seed for d in c.draws()} | {d.seed for d in first}) == 6  # new numbers for every block
    c.choose([Candidate(_ids("cc"), False)] * 3)
    assert c.finished == "length" and c.draws() == []
    whole = _choice(n=2, block=0, max_new_tokens=10)
    assert [d.max_new_tokens for d in whole.draws()] == [10, 10]
    short_first = _choice(n=2, block=4, first_block=1, max_new_tokens=10)  # the first token sooner
    assert [d.max_new_tokens for d in short_first.draws()] == [1, 1]
    short_first.choose([Candidate(_ids("a"), False)] * 2)
    assert [d.max_new_tokens for d in short_first.draws()] == [4, 4]
    assert short_first.record()["first_block"] == 1 and c.record()["first_block"] == 4


def test_the_best_scored_candidate_wins_and_extends_the_reply():
    c = _choice()
    assert c.choose([Candidate(_ids("a x "), False), Candidate(_ids("xx y"), False), Candidate(_ids("x x "), False)]) == 1
    assert _text(c.token_ids) == "xx y"
    # the reply so far is scored, not the block alone: "xx y" + "zzzz" has 2 x's, + "x..." 3
    assert c.choose([Candidate(_ids("zzzz"), False), Candidate(_ids("x."), True)]) == 1
    assert _text(c.token_ids) == "xx yx." and c.finished == "stop"
    assert c.record() == {"n": 3, "block": 4, "first_block": 4, "choices": [1, 1], "drawn": [3, 2], "dropped": 0}


def test_under_load_a_block_draws_fewer_candidates_and_the_record_says_so():
    c = _choice(n=4, block=4, max_new_tokens=8)
    assert len(c.draws()) == 4 and len(c.draws(1)) == 1 and len(c.draws(9)) == 4
    assert c.draws(2) == c.draws()[:2]  # the same seeds: fewer candidates, not other ones
    c.choose([Candidate(_ids("xx.."), False)] * 4)
    c.choose([Candidate(_ids("...."), False)])  # load arrived: one candidate
    assert c.record()["drawn"] == [4, 1] and c.finished == "length"


def test_flagged_candidates_are_dropped_even_when_they_score_best():
    c = _choice()
    assert c.choose([Candidate(_ids("a"), False), Candidate(_ids("xxx bad"), False), Candidate(_ids("x"), False)]) == 2
    assert c.dropped == 1
    # every candidate flagged: the first is kept (the reply goes on as one request would sample it)
    c2 = _choice()
    assert c2.choose([Candidate(_ids("bad"), False), Candidate(_ids("xx bad"), False)]) == 0
    assert c2.dropped == 2
    # ties go to the earlier draw
    c3 = _choice()
    assert c3.choose([Candidate(_ids("ab"), False), Candidate(_ids("cd"), False)]) == 0


def test_summary_counts_blocks_where_best_of_n_changed_the_reply():
    records = [{"n": 4, "block": 16, "choices": [0, 2, 1], "dropped": 1}, {"n": 4, "block": 16, "choices": [0], "dropped": 0}]
    assert summarise_choices(records) == {"replies": 2, "blocks": 4, "changed_share": 0.5, "dropped": 1}


# --- the stored reward ---------------------------------------------------------------------------------


def _one_hot(name: str, value: float) -> torch.Tensor:
    w = torch.zeros(len(T.NAMES))
    w[T.NAMES.index(name)] = value
    return w


def test_reward_is_the_users_lower_bound_plus_the_populations_mean(tmp_path):
    d = len(T.NAMES)
    # user: weight 1 on exclamations, scale 2, variance 4 on that weight; population: weight 1 on casual
    user = Preference(_one_hot("exclamations", 1.0), torch.diag(_one_hot("exclamations", 4.0)), 0.0, torch.zeros(d), 2.0, 10)
    pop = Preference(_one_hot("casual", 1.0), torch.zeros(d, d), 0.0, torch.zeros(d), 1.0, 100)
    reward = ReplyReward(torch.zeros(d), torch.ones(d), user, pop, k=1.0)
    replies = ["Cats are great! Really great.", "Cats are mammals."]
    got = reward.score("Tell me about cats.", replies)
    for reply, value in zip(replies, got):
        t = T.trait_vector("Tell me about cats.", reply)
        e, c = t[T.NAMES.index("exclamations")], t[T.NAMES.index("casual")]
        # mean e/2, std sqrt(4 e^2)/2 = |e|, so lower = e/2 - |e|; plus the population's c
        assert math.isclose(value, e / 2 - abs(e) + c, abs_tol=1e-6)
    assert got[0] != got[1]
    assert reward.population_score("Tell me about cats.", replies) == pytest.approx(
        [T.trait_vector("Tell me about cats.", r)[T.NAMES.index("casual")] for r in replies])
    # weight 0: the user's lower bound alone; weight 2: the population counted twice
    assert reward.score("Tell me about cats.", replies, population_weight=0.0) == pytest.approx(
        [v - c for v, c in zip(got, reward.population_score("Tell me about cats.", replies))])
    assert reward.score("Tell me about cats.", replies, population_weight=2.0) == pytest.approx(
        [v + c for v, c in zip(got, reward.population_score("Tell me about cats.", replies))])
    reward.save(tmp_path)
    again = ReplyReward.load(tmp_path)
    assert again.score("Tell me about cats.", replies) == pytest.approx(got)


def test_rewards_share_a_population_key_exactly_when_their_population_parts_agree():
    d = len(T.NAMES)
    pop = Preference(_one_hot("casual", 1.0), torch.zeros(d, d), 0.0, torch.zeros(d), 1.0, 100)
    one = Preference(_one_hot("exclamations", 1.0), torch.eye(d), 0.0, torch.zeros(d), 2.0, 10)
    other = Preference(_one_hot("length", -1.0), torch.eye(d), 0.5, torch.zeros(d), 1.0, 30)
    a = ReplyReward(torch.zeros(d), torch.ones(d), one, pop, k=1.0)
    b = ReplyReward(torch.zeros(d), torch.ones(d), other, pop, k=2.0)
    assert a.population_key() == b.population_key()  # the user's part and k do not enter population_score
    shifted = ReplyReward(torch.zeros(d), torch.full((d,), 2.0), one, pop, k=1.0)
    assert shifted.population_key() != a.population_key()  # the standardisation does
    moved = Preference(_one_hot("formal", 1.0), torch.zeros(d, d), 0.0, torch.zeros(d), 1.0, 100)
    assert ReplyReward(torch.zeros(d), torch.ones(d), one, moved, k=1.0).population_key() != a.population_key()


def test_a_missing_or_foreign_reward_file_means_one_candidate(tmp_path):
    assert ReplyReward.load(tmp_path) is None
    (tmp_path / adapter_store.REWARD_FILE).write_text('{"trait_names": ["length"], "k": 1}')
    assert ReplyReward.load(tmp_path) is None


# --- on the real model ------------------------------------------------------------------------------------


def _run(engine, prompt_ids, params, choice=None):
    """Events of one request, plain or driven by best-of-n."""
    async def go():
        stream = RequestStream(asyncio.get_running_loop())
        req = GenerationRequest("t-plain" if choice is None else "t-best", prompt_ids, params, None, stream=stream,
                                cache_salt="test")
        if choice is None:
            engine.submit(req)
        else:
            asyncio.create_task(ChoiceRun(engine, req, choice).run())
        return [ev async for ev in stream]

    return asyncio.run(go())


@pytest.fixture(scope="module")
def float32_engine(model_data_dir):
    """Greedy token-for-token equality needs float32: in bfloat16 the keys a fork prefills and the ones
    a request decoded differ in their last bits, and a near-tie can flip."""
    from service.engine import build_engine
    from service.settings import Settings

    engine = build_engine(Settings(data_dir=model_data_dir, dev_mode=True, dtype="float32"))
    engine.start()
    yield engine
    engine.stop()


def test_best_of_one_block_by_block_is_the_greedy_reply_and_streams_in_order(float32_engine):
    shared_engine = float32_engine
    tok = shared_engine.tokenizer
    rendered = tok.apply_chat_template([{"role": "user", "content": "Name three colours."}], tokenize=False,
                                       add_generation_prompt=True)
    prompt_ids = tok(rendered, add_special_tokens=False).input_ids
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    plain = _run(shared_engine, prompt_ids, params)
    choice = ReplyChoice(prompt="Name three colours.", n=1, block=5, max_new_tokens=12, seed=7,
                         score=lambda p, ts: [0.0] * len(ts), harmful=lambda ts: [False] * len(ts),
                         decode=lambda ids: tok.decode(ids, skip_special_tokens=True))
    best = _run(shared_engine, prompt_ids, params, choice)
    plain_ids = [t for ev in plain if isinstance(ev, TokenEvent) for t in ev.token_ids]
    best_tokens = [ev for ev in best if isinstance(ev, TokenEvent)]
    assert [t for ev in best_tokens for t in ev.token_ids] == plain_ids == choice.token_ids
    assert "".join(ev.text for ev in best_tokens) == "".join(ev.text for ev in plain if isinstance(ev, TokenEvent))
    assert [len(ev.token_ids) for ev in best_tokens][:2] == [5, 5]  # one event per chosen block, in order
    assert isinstance(best[-1], EndEvent) and best[-1].finish_reason == plain[-1].finish_reason
    assert best[-1].completion_tokens == len(plain_ids)


# --- through the API ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter_with_reward(tmp_path_factory, model_data_dir):
    from service.bench import make_random_adapter
    from service.model_loading import load_base_model
    from service.settings import Settings

    src = tmp_path_factory.mktemp("adapter")
    make_random_adapter(load_base_model(Settings(data_dir=model_data_dir, dev_mode=True)), src, seed=3, r=4, b_std=0.02)
    d = len(T.NAMES)
    pref = Preference(_one_hot("length", 1.0), torch.zeros(d, d), 0.0, torch.zeros(d), 1.0, 20)
    ReplyReward(torch.zeros(d), torch.ones(d), pref, pref, k=1.0).save(src)
    return src


def _serve_adapter(client, user_id: int, src) -> None:
    settings = client.app.state.settings
    with Session(client.app.state.db) as s:
        row = adapter_store.publish(settings, s, user_id=user_id, src_dir=src, metadata={}, status=AdapterStatus.promoted)
        adapter_store.activate(s, user_id=user_id, version_id=row.id)
        path = settings.adapters_dir / row.path
    assert (path / adapter_store.REWARD_FILE).is_file()  # published with the adapter


def _replies(client, user_id: int) -> list[Message]:
    with Session(client.app.state.db) as s:
        return list(s.exec(select(Message).where(Message.user_id == user_id, Message.role == "assistant")
                           .order_by(Message.id)).all())


def test_a_user_with_a_stored_reward_gets_a_chosen_reply_recorded_with_its_choices(app_factory, adapter_with_reward):
    client = app_factory(best_of_n=3, best_of_n_block=4, best_of_n_first_block=2, default_max_new_tokens=10,
                         default_temperature=0.8)
    user = signup(client, "bestof")
    _serve_adapter(client, user["id"], adapter_with_reward)
    out = chat_turn(client, user["token"], "Tell me about the sea.")
    [mid] = out["ends"]
    [msg] = _replies(client, user["id"])
    assert msg.best_of["n"] == 3 and msg.best_of["block"] == 4 and msg.best_of["first_block"] == 2
    assert 1 <= len(msg.best_of["choices"]) <= 3 and all(0 <= c < 3 for c in msg.best_of["choices"])
    assert msg.content == out["text"][mid] and msg.completion_tokens <= 10
    assert msg.adapter_label is not None  # the reply still records its adapter
    conv = client.get(f"/api/conversations/{out['starts'][0]['conversation_id']}", headers=user["headers"]).json()
    assert conv["messages"][-1]["best_of"] == msg.best_of == out["ends"][mid]["best_of"]  # the API says how it was chosen
    metrics = client.get("/metrics").text
    assert 'assistant_best_of_replies_total{n="3"} 1.0' in metrics
    # alternatives to rank are sampled plainly (a choice would bias what the user ranks)
    chat_turn(client, user["token"], "And about rivers?", alternatives=2)
    assert [m.best_of for m in _replies(client, user["id"])[1:]] == [None, None]


def test_best_of_n_off_or_without_a_reward_samples_once(app_factory, adapter_with_reward, tmp_path):
    client = app_factory(best_of_n=1, default_max_new_tokens=6)
    user = signup(client, "plainone")
    _serve_adapter(client, user["id"], adapter_with_reward)
    chat_turn(client, user["token"], "Hello there.")
    assert _replies(client, user["id"])[0].best_of is None
    client3 = app_factory(best_of_n=3, default_max_new_tokens=6)  # greedy: nothing to choose among
    greedy = signup(client3, "greedyone")
    _serve_adapter(client3, greedy["id"], adapter_with_reward)
    chat_turn(client3, greedy["token"], "Hello there.", temperature=0)
    assert _replies(client3, greedy["id"])[0].best_of is None
    client2 = app_factory(best_of_n=3, default_max_new_tokens=6, default_temperature=0.8)
    other = signup(client2, "noreward")
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in adapter_store.REQUIRED_FILES:
        (bare / name).write_bytes((adapter_with_reward / name).read_bytes())
    settings = client2.app.state.settings
    with Session(client2.app.state.db) as s:
        row = adapter_store.publish(settings, s, user_id=other["id"], src_dir=bare, metadata={}, status=AdapterStatus.promoted)
        adapter_store.activate(s, user_id=other["id"], version_id=row.id)
    chat_turn(client2, other["token"], "Hello there.")
    assert _replies(client2, other["id"])[0].best_of is None
