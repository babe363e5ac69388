"""One function per database operation, keyword-only arguments.

Every function that takes an object id also takes the caller's ``user_id`` and
returns None for objects the caller does not own, so routes answer 404 for both
"missing" and "someone else's" and never leak existence.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func
from sqlalchemy import delete as sa_delete
from sqlalchemy import update as sa_update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from service.settings import Settings

from service.adapter_store import Scope, label_of
from service.api_keys import new_api_key
from service.passwords import hash_password, verify_password
from service.models import (
    ActiveAdapter,
    ApiKey,
    AdapterVersion,
    Conversation,
    Feedback,
    Message,
    Ranking,
    Rating,
    Role,
    Schedule,
    TrainingResult,
    User,
    UserPreference,
    pk,
    utcnow,
)


class Conflict(Exception):
    pass


# --- users ------------------------------------------------------------------------

def get_user_by_username(session: Session, *, username: str) -> User | None:
    """Usernames are unique case-insensitively (``Alice`` signs in as ``alice``); an exact match
    wins where accounts from before that rule differ only in case."""
    exact = session.exec(select(User).where(User.username == username)).first()
    return exact or session.exec(select(User).where(func.lower(User.username) == username.lower()).order_by(col(User.id))).first()


def create_user(session: Session, *, username: str, password: str, role: Role = Role.user, approved: bool = True) -> User:
    if session.exec(select(User.id).where(func.lower(User.username) == username.lower())).first() is not None:
        raise Conflict(f"username {username!r} is taken")
    user = User(username=username, password_hash=hash_password(password), role=role, approved=approved)
    session.add(user)
    try:
        session.commit()
    except IntegrityError as exc:
        session.rollback()
        raise Conflict(f"username {username!r} is taken") from exc
    session.refresh(user)
    return user


def ensure_admin(session: Session, *, password: str) -> User:
    """Create or update the operator account ``admin`` (ASSISTANT_ADMIN_PASSWORD)."""
    user = get_user_by_username(session, username="admin")
    if user is None:
        return create_user(session, username="admin", password=password, role=Role.operator)
    if not verify_password(password, user.password_hash):  # a new password ends the old sessions
        user.password_hash = hash_password(password)
        user.token_version += 1
    user.role = Role.operator
    user.approved = True
    session.add(user)
    session.commit()
    return user


def list_users(session: Session) -> Sequence[User]:
    return session.exec(select(User).order_by(col(User.id))).all()


# --- conversations ------------------------------------------------------------------

def create_conversation(session: Session, *, user_id: int, title: str) -> Conversation:
    conv = Conversation(user_id=user_id, title=title[:200] or "New chat")
    session.add(conv)
    session.commit()
    session.refresh(conv)
    return conv


def get_conversation(session: Session, *, user_id: int, conversation_id: int) -> Conversation | None:
    conv = session.get(Conversation, conversation_id)
    return conv if conv is not None and conv.user_id == user_id else None


def list_conversations(session: Session, *, user_id: int, limit: int | None = None, offset: int = 0) -> Sequence[Conversation]:
    stmt = (select(Conversation).where(Conversation.user_id == user_id)
            .order_by(col(Conversation.updated_at).desc(), col(Conversation.id).desc()).offset(offset).limit(limit))
    return session.exec(stmt).all()


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_conversations(session: Session, *, user_id: int, query: str, limit: int, offset: int = 0) -> list[tuple[Conversation, str | None]]:
    """The user's conversations whose title or any message matches ``query``, newest first, each with
    the first matching message's text (None when only the title matched).

    PostgreSQL: full-text search (``websearch_to_tsquery`` with the ``simple`` configuration, so
    words match in any language without stemming) over message text, or a title substring. SQLite: a
    case-insensitive substring match (LIKE) on both. Only the user's own rows are ever read."""
    dialect = session.get_bind().dialect.name
    title_hit = col(Conversation.title).ilike(_like_pattern(query), escape="\\")
    if dialect == "postgresql":
        doc = func.to_tsvector("simple", Message.content)
        text_hit = doc.op("@@")(func.websearch_to_tsquery("simple", query))
    else:
        text_hit = col(Message.content).ilike(_like_pattern(query), escape="\\")
    hits = select(Message.conversation_id).where(Message.user_id == user_id, text_hit)
    stmt = (select(Conversation)
            .where(Conversation.user_id == user_id, title_hit | col(Conversation.id).in_(hits))
            .order_by(col(Conversation.updated_at).desc(), col(Conversation.id).desc()).offset(offset).limit(limit))
    out = []
    for conv in session.exec(stmt).all():
        first = session.exec(select(Message.content).where(Message.conversation_id == conv.id, Message.user_id == user_id, text_hit)
                             .order_by(col(Message.id))).first()
        out.append((conv, first))
    return out


MAX_API_KEYS = 25


def create_api_key(session: Session, *, user_id: int, name: str) -> tuple[ApiKey, str]:
    """A new key for the user: the row, and the key itself (shown once, never stored)."""
    held = session.exec(select(func.count()).select_from(ApiKey).where(ApiKey.user_id == user_id)).one()
    if held >= MAX_API_KEYS:
        raise Conflict(f"you have {held} API keys, the most one user may hold; revoke one you no longer use")
    key, digest = new_api_key()
    row = ApiKey(user_id=user_id, name=name, prefix=key[:10], key_hash=digest)
    session.add(row)
    session.commit()
    session.refresh(row)
    return row, key


def list_api_keys(session: Session, *, user_id: int) -> Sequence[ApiKey]:
    return session.exec(select(ApiKey).where(ApiKey.user_id == user_id).order_by(col(ApiKey.id))).all()


def delete_api_key(session: Session, *, user_id: int, key_id: int) -> bool:
    n = session.exec(sa_delete(ApiKey).where(col(ApiKey.id) == key_id, col(ApiKey.user_id) == user_id)).rowcount
    session.commit()
    return bool(n)


def get_preferences(session: Session, *, user_id: int) -> UserPreference:
    """The user's settings; defaults (not stored) if they never saved any."""
    return session.get(UserPreference, user_id) or UserPreference(user_id=user_id)


def save_preferences(session: Session, *, user_id: int, **fields) -> UserPreference:
    row = session.get(UserPreference, user_id) or UserPreference(user_id=user_id)
    for k, v in fields.items():
        setattr(row, k, v)
    row.updated_at = utcnow()
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def rename_conversation(session: Session, *, conv: Conversation, title: str) -> Conversation:
    conv.title = title
    conv.updated_at = utcnow()
    session.add(conv)
    session.commit()
    return conv


def delete_conversation(session: Session, *, conv: Conversation) -> int:
    """Delete a conversation with its messages, their feedback and rankings; returns how many
    ratings and rankings went with it."""
    msg_ids = list(session.exec(select(Message.id).where(Message.conversation_id == conv.id)).all())
    labels = 0
    if msg_ids:
        labels += session.exec(sa_delete(Feedback).where(col(Feedback.message_id).in_(msg_ids))).rowcount or 0
        labels += session.exec(sa_delete(Ranking).where(col(Ranking.alternative_group).in_(msg_ids))).rowcount or 0
        session.execute(sa_update(Message).where(col(Message.conversation_id) == conv.id).values(parent_id=None)
                        .execution_options(synchronize_session=False))
        session.execute(sa_delete(Message).where(col(Message.conversation_id) == conv.id))
    session.delete(conv)
    session.commit()
    return labels


# --- messages -----------------------------------------------------------------------

def get_message(session: Session, *, user_id: int, message_id: int) -> Message | None:
    msg = session.get(Message, message_id)
    return msg if msg is not None and msg.user_id == user_id else None


def list_messages(session: Session, *, conversation_id: int) -> Sequence[Message]:
    stmt = select(Message).where(Message.conversation_id == conversation_id).order_by(col(Message.id))
    return session.exec(stmt).all()


def add_message(session: Session, **fields) -> Message:
    msg = Message(**fields)
    session.add(msg)
    conv = session.get(Conversation, msg.conversation_id)
    if conv is not None:
        conv.updated_at = utcnow()
        session.add(conv)
    session.commit()
    session.refresh(msg)
    return msg


def finish_message(
    session: Session,
    *,
    message_id: int,
    content: str,
    finish_reason: str,
    prompt_tokens: int,
    completion_tokens: int,
    best_of: dict | None = None,
) -> None:
    msg = session.get(Message, message_id)
    if msg is None:  # the conversation was deleted while generating
        return
    msg.best_of = best_of
    msg.content = content
    msg.finish_reason = finish_reason
    msg.prompt_tokens = prompt_tokens
    msg.completion_tokens = completion_tokens
    msg.completed_at = utcnow()
    session.add(msg)
    session.commit()


def siblings(session: Session, *, group: int) -> Sequence[Message]:
    stmt = select(Message).where(Message.alternative_group == group, Message.role == "assistant")
    return session.exec(stmt.order_by(col(Message.alternative_index))).all()


def next_alternative_index(session: Session, *, group: int) -> int:
    current = session.exec(select(func.max(Message.alternative_index)).where(Message.alternative_group == group)).one()
    return 0 if current is None else int(current) + 1


def thread(session: Session, *, leaf: Message, limit: int | None = None) -> list[Message]:
    """The messages from the root to ``leaf`` following parent links (only the newest ``limit``)."""
    chain: list[Message] = []
    cur: Message | None = leaf
    seen: set[int] = set()
    while cur is not None and cur.id not in seen and (limit is None or len(chain) < limit):
        seen.add(pk(cur))
        chain.append(cur)
        cur = session.get(Message, cur.parent_id) if cur.parent_id is not None else None
    return list(reversed(chain))


def default_parent(session: Session, *, conversation_id: int) -> Message | None:
    """Where a new user turn attaches: the ranked-best (else first) reply of the latest turn."""
    last_user = session.exec(
        select(Message)
        .where(Message.conversation_id == conversation_id, Message.role == "user")
        .order_by(col(Message.id).desc())
    ).first()
    if last_user is None:  # the first turn: under the conversation's instructions, if it has them
        return session.exec(select(Message).where(Message.conversation_id == conversation_id, Message.role == "system",
                                                  col(Message.parent_id).is_(None)).order_by(col(Message.id))).first()
    last_user_id = pk(last_user)
    replies = list(siblings(session, group=last_user_id))
    if not replies:
        return last_user
    ranking = session.exec(select(Ranking).where(Ranking.alternative_group == last_user_id)).first()
    if ranking is not None and ranking.message_ids:
        best = next((m for m in replies if m.id == ranking.message_ids[0]), None)
        if best is not None:
            return best
    return replies[0]


def adapter_labels(session: Session, *, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = session.exec(select(AdapterVersion).where(col(AdapterVersion.id).in_(ids))).all()
    return {pk(r): label_of(r) for r in rows}


# --- feedback -----------------------------------------------------------------------

def upsert_feedback(
    session: Session,
    *,
    user_id: int,
    message_id: int,
    rating: Rating,
    reasons: list[str],
    comment: str | None,
    source: str = "human",
    score: int | None = None,
) -> Feedback:
    """One row per user and message: a later rating replaces the earlier one."""
    for attempt in range(2):
        fb = session.exec(select(Feedback).where(Feedback.user_id == user_id, Feedback.message_id == message_id)).first()
        if fb is None:
            fb = Feedback(user_id=user_id, message_id=message_id, rating=rating, reasons=reasons, comment=comment, source=source,
                          score=score)
        else:
            fb.rating, fb.reasons, fb.comment, fb.source, fb.score, fb.updated_at = (rating, list(reasons), comment, source,
                                                                                     score, utcnow())
        session.add(fb)
        try:
            session.commit()
        except IntegrityError:  # a concurrent first rating won the insert: update it instead
            session.rollback()
            if attempt == 1:
                raise
            continue
        session.refresh(fb)
        return fb
    raise AssertionError("unreachable")


def feedback_for(session: Session, *, user_id: int, message_ids: list[int]) -> dict[int, Feedback]:
    if not message_ids:
        return {}
    rows = session.exec(
        select(Feedback).where(Feedback.user_id == user_id, col(Feedback.message_id).in_(message_ids))
    ).all()
    return {f.message_id: f for f in rows}


def list_feedback(session: Session, *, user_id: int) -> Sequence[Feedback]:
    return session.exec(select(Feedback).where(Feedback.user_id == user_id).order_by(col(Feedback.id))).all()


def count_messages(session: Session, *, user_id: int) -> int:
    return int(session.exec(select(func.count()).select_from(Message).where(Message.user_id == user_id)).one())


def stored_chars(session: Session, *, user_id: int) -> int:
    """Characters of all the user's stored messages (a scan of their rows: call it sparingly)."""
    return int(session.exec(select(func.coalesce(func.sum(func.length(Message.content)), 0))
                            .where(Message.user_id == user_id)).one())


def delete_account(session: Session, *, user_id: int) -> None:
    """Delete a user and everything that is theirs, in one transaction: conversations, messages,
    feedback, rankings, their training results and adapter version rows (erase the adapter files
    first: ``adapter_store.erase_user_adapters``). Shared models trained on their labels keep them
    until their next run, which no longer finds them."""
    session.execute(sa_delete(Feedback).where(col(Feedback.user_id) == user_id))
    session.execute(sa_delete(Ranking).where(col(Ranking.user_id) == user_id))
    session.execute(sa_update(Message).where(col(Message.user_id) == user_id).values(parent_id=None)
                    .execution_options(synchronize_session=False))
    session.execute(sa_delete(Message).where(col(Message.user_id) == user_id))
    session.execute(sa_delete(Conversation).where(col(Conversation.user_id) == user_id))
    session.execute(sa_delete(TrainingResult).where(col(TrainingResult.user_id) == user_id))
    session.execute(sa_delete(ActiveAdapter).where(col(ActiveAdapter.scope) == Scope(user_id).key))
    session.execute(sa_delete(AdapterVersion).where(col(AdapterVersion.user_id) == user_id))
    session.execute(sa_delete(UserPreference).where(col(UserPreference.user_id) == user_id))
    session.execute(sa_delete(ApiKey).where(col(ApiKey.user_id) == user_id))
    session.execute(sa_delete(User).where(col(User.id) == user_id))
    session.commit()


def delete_feedback(session: Session, *, user_id: int) -> int:
    n = session.exec(sa_delete(Feedback).where(col(Feedback.user_id) == user_id)).rowcount
    m = session.exec(sa_delete(Ranking).where(col(Ranking.user_id) == user_id)).rowcount
    user = session.get(User, user_id)
    if user is not None:  # importers of ratings kept elsewhere must not bring these back
        user.ratings_deleted_at = utcnow()
        session.add(user)
    session.commit()
    return int(n or 0) + int(m or 0)


def upsert_ranking(session: Session, *, user_id: int, group: int, message_ids: list[int]) -> Ranking:
    for attempt in range(2):
        row = session.exec(select(Ranking).where(Ranking.user_id == user_id, Ranking.alternative_group == group)).first()
        if row is None:
            row = Ranking(user_id=user_id, alternative_group=group, message_ids=message_ids)
        else:
            row.message_ids, row.updated_at = list(message_ids), utcnow()
        session.add(row)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            if attempt == 1:
                raise
            continue
        session.refresh(row)
        return row
    raise AssertionError("unreachable")


def list_rankings(session: Session, *, user_id: int) -> Sequence[Ranking]:
    return session.exec(select(Ranking).where(Ranking.user_id == user_id).order_by(col(Ranking.id))).all()


# --- schedule -----------------------------------------------------------------------

def get_or_create_schedule(session: Session, *, settings: Settings) -> Schedule:
    """The schedule row, created from ASSISTANT_SCHEDULE_CRON/_ENABLED on first use (race-safe)."""
    row = session.get(Schedule, 1)
    if row is None:
        row = Schedule(id=1, cron=settings.schedule_cron, enabled=settings.schedule_enabled)
        session.add(row)
        try:
            session.commit()
        except IntegrityError:  # another process created it at the same moment
            session.rollback()
            return session.exec(select(Schedule).where(Schedule.id == 1)).one()
        session.refresh(row)
    return row
