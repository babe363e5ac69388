"""One serving decision (``adapter_store.resolve_for_user``) and the exploration alternatives built from it."""

from __future__ import annotations

from sqlmodel import Session

from service.adapter_store import Policy, activate, resolve_for_user
from service.engine.base import SamplingParams
from service.models import AdapterStatus, AdapterVersion
from tests.service.conftest import signup


def _version(session: Session, user_id: int | None, status: AdapterStatus) -> AdapterVersion:
    row = AdapterVersion(user_id=user_id, version=1, status=status, path=f"{'global' if user_id is None else user_id}/v1")
    session.add(row)
    session.commit()
    session.refresh(row)
    activate(session, user_id=user_id, version_id=row.id)
    return row


def test_the_serving_decision_and_what_exploration_draws_from_it(client):
    chat, settings = client.app.state.chat, client.app.state.settings
    alice = signup(client, "alice")
    with Session(chat.db) as s:
        assert resolve_for_user(settings, s, alice["id"]).policy == Policy.BASE  # nothing trained yet
        glob = _version(s, None, AdapterStatus.candidate)
        # a global version that is not promoted never serves, asked for by name or not
        assert resolve_for_user(settings, s, alice["id"]).policy == Policy.BASE
        assert resolve_for_user(settings, s, alice["id"], Policy.GLOBAL).policy == Policy.BASE
        glob.status = AdapterStatus.promoted
        s.add(glob)
        s.commit()
        assert resolve_for_user(settings, s, alice["id"]).version_id == glob.id
        own = _version(s, alice["id"], AdapterStatus.promoted)
        main = resolve_for_user(settings, s, alice["id"])
        assert (main.policy, main.version_id, main.label) == (Policy.USER, own.id, f"u{alice['id']}-v1")
        assert resolve_for_user(settings, s, alice["id"], Policy.GLOBAL).version_id == glob.id
        assert resolve_for_user(settings, s, alice["id"], Policy.BASE).adapter is None
        # exploration: one alternative from another policy, each recorded as "explore:<what>"
        params = SamplingParams(max_new_tokens=4, temperature=0.5)
        drawn = {}
        chat._rng.choice = lambda options: drawn.update({r.policy: (r, p) for r, p in options}) or options[0]
        chat._explore(s, alice["id"], main, params)
        assert set(drawn) == {"explore:global", "explore:base", "explore:temperature"}
        assert drawn["explore:global"][0].version_id == glob.id and drawn["explore:base"][0].adapter is None
        hot, p = drawn["explore:temperature"]
        assert hot.version_id == own.id and abs(p.temperature - 1.05) < 1e-9  # max(0.5, 0.7) x 1.5
        # a user on the base has nothing else to explore but a hotter base
        drawn.clear()
        chat._explore(s, alice["id"], resolve_for_user(settings, s, alice["id"], Policy.BASE), params)
        assert set(drawn) == {"explore:temperature"}
