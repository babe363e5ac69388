"""Fixtures for the learning tests: a database seeded with conversations, ratings and rankings.

``make_settings`` and ``model_data_dir`` come from tests/conftest.py (the model is converted once
per session). Rows are built directly from ``service.models`` so a test reads as the data it has.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from sqlmodel import Session

from service.db import init_db, make_engine
from service.settings import Settings
from service.models import GENERATED, Conversation, Feedback, Message, Ranking, Rating, User

from learning.config import Budgets


@dataclass
class Seeder:
    engine: object
    users: dict[str, int] = field(default_factory=dict)

    def user(self, name: str, role: str = "user", approved: bool = True) -> int:
        with Session(self.engine) as s:
            u = User(username=name, password_hash="x", role=role, approved=approved)
            s.add(u)
            s.commit()
            self.users[name] = u.id
            return u.id

    def turn(self, user_id: int, prompt: str, replies: list[str], *, history: list[tuple[str, str]] = (),
             origin: str = GENERATED) -> list[int]:
        """A conversation (optionally with earlier turns) ending in ``prompt`` answered by sibling ``replies``."""
        with Session(self.engine) as s:
            conv = Conversation(user_id=user_id)
            s.add(conv)
            s.commit()
            parent = None
            for role, content in history:
                m = Message(conversation_id=conv.id, user_id=user_id, role=role, content=content, parent_id=parent)
                s.add(m)
                s.commit()
                parent = m.id
            q = Message(conversation_id=conv.id, user_id=user_id, role="user", content=prompt, parent_id=parent)
            s.add(q)
            s.commit()
            ids = []
            for i, text in enumerate(replies):
                a = Message(conversation_id=conv.id, user_id=user_id, role="assistant", content=text, parent_id=q.id,
                            origin=origin, alternative_group=q.id, alternative_index=i)
                s.add(a)
                s.commit()
                ids.append(a.id)
            return ids

    def rate(self, user_id: int, message_id: int, rating: str, reasons: list[str] = (), score: int | None = None) -> int:
        with Session(self.engine) as s:
            f = Feedback(user_id=user_id, message_id=message_id, rating=Rating(rating), reasons=list(reasons), score=score)
            s.add(f)
            s.commit()
            return f.id

    def rank(self, user_id: int, message_ids: list[int]) -> int:
        with Session(self.engine) as s:
            group = s.get(Message, message_ids[0]).alternative_group
            r = Ranking(user_id=user_id, alternative_group=group, message_ids=message_ids)
            s.add(r)
            s.commit()
            return r.id


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: the suite shares a small CPU, where two spinning threads run far slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def settings(tmp_path):
    """Settings for tests that need a database but not the model."""
    return Settings(data_dir=tmp_path / "data", dev_mode=True)


@pytest.fixture
def db(settings):
    engine = make_engine(settings)
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def seeder(db) -> Seeder:
    return Seeder(db)


def tiny_budgets(**overrides) -> Budgets:
    """Budgets for end-to-end tests on the real model: a warm start on 2 x 2 samples, then a few PPO
    steps of 1 prompt x 2 samples x 12 tokens."""
    base = dict(ppo_steps=2, ppo_batch_size=2, ppo_group_size=2, ppo_minibatch_size=1, ppo_epochs=1, ppo_max_new_tokens=12,
                warm_start_prompts=2, warm_start_samples=2, warm_start_epochs=1,
                gate_prompts=2, gate_harm_prompts=1, gate_harm_samples=3, gate_base_harm_samples=0,
                reward_steps=60, min_user_labels=4, min_global_labels=4, max_prompt_tokens=128,
                max_reply_tokens=64, lora_r=4, lora_alpha=8, ppo_lr=5e-4)
    base.update(overrides)
    return Budgets(**base)


def seed_feedback(seeder: Seeder, name: str = "alice", n_turns: int = 4) -> int:
    """A user who likes short friendly replies and dislikes rude ones: rankings, thumbs, one harm label."""
    uid = seeder.user(name)
    for i in range(n_turns):
        good, long_, rude = seeder.turn(uid, f"Question {i}: how do I boil an egg?",
                                        ["Put it in boiling water for 8 minutes.",
                                         "Eggs are fascinating. " * 6 + "Boil it.",
                                         "Figure it out yourself, idiot."])
        seeder.rank(uid, [good, long_, rude])
        seeder.rate(uid, good, "up", ["helpful"])
        seeder.rate(uid, rude, "down", ["rude"] if i % 2 == 0 else ["unhelpful"])
    return uid
