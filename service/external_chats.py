"""A front end's own chats, each stored as one conversation here (issue 31).

An OpenAI client sends the whole history with every request. Open WebUI also names the chat
(``X-OpenWebUI-Chat-Id``); with that id, each request is laid onto the chat's conversation tree:
every message that matches a stored one (same role and text, child of the previous) is reused, the
first that does not starts a branch. So a multi-turn chat is one conversation, not one per turn,
and a regenerated reply lands beside the original, in the same alternative group: a thumbs-up on
one and a thumbs-down on the other make a preference pair.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from sqlmodel import Session, col, select

from service import crud
from service.models import Conversation, Message, is_generated_reply

CHAT_ID_HEADER = "X-OpenWebUI-Chat-Id"
MAX_CHAT_ID = 128


def _same(stored: Message, role: str, content: str) -> bool:
    if stored.role != role:
        return False
    if stored.content.strip() == content.strip():
        return True
    # A reply the user stopped: the front end may keep a token fewer (or more) than was stored.
    a, b = stored.content.strip(), content.strip()
    return role == "assistant" and bool(a) and bool(b) and (a.startswith(b) or b.startswith(a))


def attach(session: Session, *, user_id: int, chat_id: str, messages: Sequence[dict], title: str) -> tuple[Conversation, Message]:
    """``messages`` on the tree of the user's conversation for ``chat_id`` (made if new). Returns the
    conversation and the stored last message (the turn to answer)."""
    conv = session.exec(select(Conversation).where(Conversation.user_id == user_id,
                                                   Conversation.external_id == chat_id)).first()
    children: dict[int | None, list[Message]] = defaultdict(list)
    if conv is None:
        conv = crud.create_conversation(session, user_id=user_id, title=title)
        conv.external_id = chat_id
        session.add(conv)
        session.commit()
    else:
        for stored in session.exec(select(Message).where(Message.conversation_id == conv.id, Message.user_id == user_id)
                                   .order_by(col(Message.id).desc())):
            children[stored.parent_id].append(stored)  # newest first: the latest of equal siblings is reused
    parent: Message | None = None
    branching = False
    for m in messages:
        found = None
        if not branching:
            found = next((c for c in children.get(parent.id if parent else None, []) if _same(c, m["role"], m["content"])), None)
        if found is None:
            branching = True
            found = crud.add_message(session, conversation_id=conv.id, user_id=user_id, role=m["role"], content=m["content"],
                                     parent_id=parent.id if parent else None)
        parent = found
    assert parent is not None  # the route refuses an empty history
    return conv, parent


def generated_start(session: Session, user_msg: Message, partial: str) -> bool:
    """Whether ``partial`` (a reply the client asks to continue) is the start of a reply generated here
    to ``user_msg``: then the continued reply is this server's, whole."""
    start = partial.strip()
    replies = session.exec(select(Message).where(Message.parent_id == user_msg.id, Message.user_id == user_msg.user_id))
    return bool(start) and any(is_generated_reply(m) and m.content.strip().startswith(start) for m in replies)
