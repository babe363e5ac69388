"""Open WebUI's thumbs into the learning loop: an importer of its feedback export.

Open WebUI keeps the ratings its users give in its own database (table ``feedback``). An operator
exports them (Admin Panel -> Evaluations -> Feedbacks -> Export, or
``GET /api/v1/evaluations/feedbacks/all/export`` with an admin token): a JSON array of records

    {"id", "user_id", "type": "rating",
     "data": {"rating": 1 | -1, "reason", "comment", "tags", "details": {"rating": 1-10}, "model_id", ...},
     "meta": {"chat_id", "message_id", "message_index", "model_id", ...},
     "snapshot": {"chat": {"id", "user_id", "title", "chat": {"history": {"messages": {id: {"role",
                  "content", "parentId", ...}}}}}},
     "created_at", "updated_at"}

``import_feedback`` maps each record to the reply this server generated for it: the Open WebUI user
is the trusted-proxy user ``owui-<user_id>`` (``service.proxy``); the rated message's text (and its
parent, the user's prompt) are read from the record's chat snapshot and matched, exactly after
trimming, against that user's generated replies (the newest match wins). A match becomes that
user's thumbs rating (``crud.upsert_feedback``: one per reply, so importing the same export twice
changes nothing and a changed vote replaces the old one). Open WebUI's reason strings map onto
this product's reasons by keywords; its comment is kept. Records that match nothing (another
model's reply, a user who never chatted through the proxy, a reply edited in Open WebUI) are
counted and listed, never guessed. Records apply oldest first (by their ``updated_at``), so the
newest vote on a reply wins; a rating made before the user deleted their ratings here
(``User.ratings_deleted_at``) is never brought back; a malformed record is skipped, not fatal.

Ratings written here carry ``source="openwebui"``. With ``sync_deletions`` (the export is Open
WebUI's whole feedback table, as ``service.openwebui_sync`` fetches it), a rating imported before
whose record is gone from the export (the user deleted it there) is deleted here too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlmodel import Session, col, select

from service import crud
from service.models import GENERATED, OPENWEBUI_SOURCE, Feedback, Message, Rating, User, pk
from service.proxy import USERNAME_PREFIX

logger = logging.getLogger(__name__)

MAX_COMMENT = 2000  # as the feedback route (service.schemas.FeedbackCreate)

# Keywords in Open WebUI's reason strings (its thumbs dialogs offer e.g. "Accurate information",
# "Too verbose", "Not factually correct") -> this product's reasons (service.models.REASONS).
REASON_KEYWORDS: tuple[tuple[str, str], ...] = (
    ("verbose", "too_long"), ("too long", "too_long"), ("too short", "too_short"), ("brief", "too_short"),
    ("factual", "inaccurate"), ("incorrect", "inaccurate"), ("inaccurate", "inaccurate"),
    ("refus", "refused"), ("harm", "harmful"), ("offens", "offensive"), ("rude", "rude"),
    ("off topic", "off_topic"), ("off-topic", "off_topic"), ("lazy", "unhelpful"), ("not helpful", "unhelpful"),
    ("didn't fully follow", "unhelpful"), ("accurate", "accurate"), ("creativ", "creative"),
    ("attention to detail", "detailed"), ("thorough", "detailed"), ("detail", "detailed"),
    ("positive attitude", "friendly"), ("friendly", "friendly"), ("followed instructions", "helpful"),
    ("helpful", "helpful"), ("concise", "concise"), ("format", "well_formatted"),
)
# Open WebUI's own reason codes (RateComment.svelte, 0.5 and later; older versions stored the
# English labels, which the keywords above read). "dont_like_the_style" and "other" have no reason
# here: the first is kept in the comment, so the user's words are not lost.
REASON_CODES: dict[str, str | None] = {
    "accurate_information": "accurate", "followed_instructions_perfectly": "helpful", "showcased_creativity": "creative",
    "positive_attitude": "friendly", "attention_to_detail": "detailed", "thorough_explanation": "detailed",
    "too_verbose": "too_long", "not_helpful": "unhelpful", "not_factually_correct": "inaccurate",
    "didnt_fully_follow_instructions": "unhelpful", "refused_when_it_shouldnt_have": "refused", "being_lazy": "unhelpful",
    "dont_like_the_style": None, "other": None,
}
UNMAPPED_LABELS = {"dont_like_the_style": "Don't like the style"}
NEGATIVE_ONLY = {"too_long", "too_short", "inaccurate", "refused", "harmful", "offensive", "rude", "off_topic", "unhelpful"}


@dataclass
class ImportReport:
    imported: int = 0  # ratings written (new or changed)
    unchanged: int = 0  # already there with the same rating, reasons and comment
    skipped: list[str] = field(default_factory=list)  # one line per record that matched nothing
    deleted: int = 0  # with sync_deletions: imported ratings whose record left the export
    matched: set[tuple[int, int]] = field(default_factory=set)  # (user id, message id) the export rates

    def summary(self) -> str:
        out = f"{self.imported} imported, {self.unchanged} unchanged, {len(self.skipped)} skipped"
        return out + (f", {self.deleted} deleted" if self.deleted else "")


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _rating(data: dict[str, Any]) -> Rating | None:
    raw = data.get("rating")
    if raw is None:
        return None
    try:
        value = int(raw)
    except (TypeError, ValueError, OverflowError):
        return None
    return Rating.up if value > 0 else Rating.down if value < 0 else None


def map_reasons(reason: Any, tags: Any, rating: Rating) -> list[str]:
    """This product's reasons for Open WebUI's reason string and tags, by keywords, in first-seen order."""
    texts = [reason] if isinstance(reason, str) else []
    texts += [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []
    out: list[str] = []
    for text in texts:
        low = text.strip().lower()
        if low in REASON_CODES:
            ours = REASON_CODES[low]
            if ours is not None and ours not in out and (ours in NEGATIVE_ONLY) == (rating == Rating.down):
                out.append(ours)
            continue
        for word, ours in REASON_KEYWORDS:
            if word in low and ours not in out and (ours in NEGATIVE_ONLY) == (rating == Rating.down):
                out.append(ours)
                break
    return out


def _score(data: dict[str, Any]) -> int | None:
    """Open WebUI's 1-10 rating (``data.details.rating``), if it holds one."""
    raw = _dict(data.get("details")).get("rating")
    if isinstance(raw, str) and raw.strip().isdigit():
        raw = int(raw.strip())
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw != raw or int(raw) != raw:
        return None
    return int(raw) if 1 <= raw <= 10 else None


def _comment(data: dict[str, Any]) -> str | None:
    """Its comment, after the label of a reason that maps to none of ours (kept, not lost)."""
    parts = []
    reason = data.get("reason")
    if isinstance(reason, str) and reason.strip().lower() in UNMAPPED_LABELS:
        parts.append(f"[Open WebUI: {UNMAPPED_LABELS[reason.strip().lower()]}]")
    if isinstance(data.get("comment"), str) and data["comment"].strip():
        parts.append(data["comment"])
    comment = " ".join(parts)
    return comment[:MAX_COMMENT].replace("\x00", "") if comment else None


def _chat_messages(record: dict[str, Any]) -> dict[str, Any]:
    chat = _dict(_dict(record.get("snapshot")).get("chat"))
    inner = chat.get("chat")
    if not isinstance(inner, dict):
        inner = chat
    return _dict(_dict(inner.get("history")).get("messages"))


def _when(record: dict[str, Any]) -> float:
    """The record's last change, in Unix seconds (0 when it does not say)."""
    for key in ("updated_at", "created_at"):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e11:
            return float(value)
    return 0.0


def _text(message: Any) -> str | None:
    content = message.get("content") if isinstance(message, dict) else None
    return content.strip() if isinstance(content, str) else None


class _Replies:
    """Each user's generated replies by their trimmed text (newest first), read once per user."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.by_user: dict[int, dict[str, list[Message]]] = {}

    def match(self, user: User, reply: str, prompt: str | None) -> Message | None:
        """The newest generated reply of ``user`` with this text (and this prompt before it, when known)."""
        user_id = pk(user)
        if user_id not in self.by_user:
            index: dict[str, list[Message]] = {}
            rows = self.session.exec(select(Message).where(Message.user_id == user_id, Message.role == "assistant",
                                                           Message.origin == GENERATED).order_by(col(Message.id).desc()))
            for m in rows:
                index.setdefault(m.content.strip(), []).append(m)
            self.by_user[user_id] = index
        for m in self.by_user[user_id].get(reply, []):
            if prompt is None:
                return m
            parent = self.session.get(Message, m.parent_id) if m.parent_id is not None else None
            if parent is not None and parent.content.strip() == prompt:
                return m
        return None


def import_feedback(session: Session, records: Iterable[Any], *, dry_run: bool = False,
                    sync_deletions: bool = False) -> ImportReport:
    """Write each Open WebUI rating that matches a reply generated here as that user's thumbs rating
    (``dry_run``: only count what would be written; ``sync_deletions``: the records are the whole
    export, so imported ratings missing from it are deleted)."""
    report = ImportReport()
    users: dict[str, User | None] = {}
    replies = _Replies(session)
    numbered = list(enumerate(records))
    numbered.sort(key=lambda item: _when(item[1]) if isinstance(item[1], dict) else 0.0)  # oldest first: the newest vote wins
    for i, record in numbered:
        where = f"record {i}" + (f" ({str(record.get('id'))[:64]})" if isinstance(record, dict) and record.get("id") else "")
        if not isinstance(record, dict) or record.get("type", "rating") != "rating":
            report.skipped.append(f"{where}: not a rating")
            continue
        try:
            _import_one(session, record, where, report, users, replies, dry_run)
        except (TypeError, ValueError, AttributeError) as exc:  # a malformed record: skip it, keep going
            session.rollback()
            report.skipped.append(f"{where}: malformed record ({type(exc).__name__})")
    if sync_deletions:
        _delete_missing(session, report, dry_run)
    logger.info("Open WebUI feedback import: %s", report.summary())
    return report


def _delete_missing(session: Session, report: ImportReport, dry_run: bool) -> None:
    """Ratings imported from Open WebUI that no record of the export rates any more."""
    gone = [f for f in session.exec(select(Feedback).where(Feedback.source == OPENWEBUI_SOURCE))
            if (f.user_id, f.message_id) not in report.matched]
    report.deleted = len(gone)
    if gone and not dry_run:
        for f in gone:
            session.delete(f)
        session.commit()


def _import_one(session: Session, record: dict[str, Any], where: str, report: ImportReport, users: dict[str, User | None],
                replies: _Replies, dry_run: bool) -> None:
    data, meta = _dict(record.get("data")), _dict(record.get("meta"))
    rating = _rating(data)
    if rating is None:
        report.skipped.append(f"{where}: no thumbs rating (data.rating must be 1 or -1)")
        return
    owui_id = str(record.get("user_id") or "")
    if owui_id not in users:
        users[owui_id] = crud.get_user_by_username(session, username=USERNAME_PREFIX + owui_id) if owui_id else None
    user = users[owui_id]
    if user is None:
        report.skipped.append(f"{where}: no product user {USERNAME_PREFIX}{owui_id[:64]} (only users who chatted "
                              "through the trusted proxy can be matched)")
        return
    deleted = user.ratings_deleted_at
    if deleted is not None:
        deleted = deleted if deleted.tzinfo else deleted.replace(tzinfo=timezone.utc)
        if datetime.fromtimestamp(_when(record), timezone.utc) <= deleted:
            report.skipped.append(f"{where}: made before {user.username} deleted their ratings here")
            return
    messages = _chat_messages(record)
    rated = _dict(messages.get(str(meta.get("message_id") or "")))
    reply = _text(rated)
    if not reply:
        report.skipped.append(f"{where}: the chat snapshot lacks the rated message's text")
        return
    prompt = _text(messages.get(str(rated.get("parentId")))) if rated.get("parentId") else None
    msg = replies.match(user, reply, prompt)
    if msg is None:
        report.skipped.append(f"{where}: no reply generated here for {user.username} has this text")
        return
    user_id, msg_id = pk(user), pk(msg)
    report.matched.add((user_id, msg_id))
    reasons = map_reasons(data.get("reason"), data.get("tags"), rating)
    comment, score = _comment(data), _score(data)
    before = crud.feedback_for(session, user_id=user_id, message_ids=[msg_id]).get(msg_id)
    if before is not None and (before.rating, list(before.reasons), before.comment, before.score) == (rating, reasons, comment, score):
        report.unchanged += 1
        return
    if not dry_run:
        crud.upsert_feedback(session, user_id=user_id, message_id=msg_id, rating=rating, reasons=reasons, comment=comment,
                             score=score, source=OPENWEBUI_SOURCE)
    report.imported += 1
