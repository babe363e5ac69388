"""Conversations, feedback and rankings: thin routes over service.crud."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse

from service import adapter_store, crud, exports
from service.auth import COOKIE_NAME, ApprovedUser, CurrentUser, SessionDep, SessionUser, SettingsDep
from service.models import Message, Role, is_generated_reply
from service.schemas import (
    ConversationDetail,
    ConversationPublic,
    ConversationUpdate,
    FeedbackBrief,
    FeedbackCreate,
    FeedbackPublic,
    NO_NUL,
    IdPath,
    MessagePublic,
    RankingCreate,
    RankingPublic,
)

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["conversations"])


def _not_found(what: str, id_: int) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"{what} {id_} not found")


def _not_generated(id_: int) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                         f"message {id_} was sent by a client as context, not generated here; only generated replies can be rated or ranked")


def _snippet(text: str | None, query: str, width: int = 90) -> str | None:
    """About ``width`` characters of ``text`` around the first occurrence of ``query``."""
    if not text:
        return None
    at = text.lower().find(query.lower())
    if at < 0:  # a full-text match on a word form the substring search does not see
        at = next((text.lower().find(w.lower()) for w in query.split() if w.lower() in text.lower()), 0)
    start = max(0, at - width // 3)
    out = " ".join(text[start:start + width].split())
    return ("…" if start else "") + out + ("…" if start + width < len(text) else "")


@router.get("/conversations", response_model=list[ConversationPublic])
def list_conversations(
    user: CurrentUser, session: SessionDep,
    q: Annotated[str | None, Query(max_length=200, pattern=NO_NUL, description="Search titles and message text (yours only).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[ConversationPublic]:
    """The user's conversations, most recently updated first; with ``q``, those whose title or any
    message matches it, each with a snippet of the first matching message."""
    if q is not None and q.strip():
        hits = crud.search_conversations(session, user_id=user.id, query=q.strip(), limit=limit, offset=offset)
        return [ConversationPublic(id=c.id, title=c.title, updated_at=c.updated_at, snippet=_snippet(text, q.strip()))
                for c, text in hits]
    return [ConversationPublic(id=c.id, title=c.title, updated_at=c.updated_at)
            for c in crud.list_conversations(session, user_id=user.id, limit=limit, offset=offset)]


@router.get("/conversations/{conversation_id}", response_model=ConversationDetail)
def get_conversation(conversation_id: IdPath, user: CurrentUser, session: SessionDep) -> ConversationDetail:
    conv = crud.get_conversation(session, user_id=user.id, conversation_id=conversation_id)
    if conv is None:
        raise _not_found("conversation", conversation_id)
    msgs = crud.list_messages(session, conversation_id=conv.id)
    labels = crud.adapter_labels(session, ids={m.adapter_version_id for m in msgs if m.adapter_version_id})
    fbs = crud.feedback_for(session, user_id=user.id, message_ids=[m.id for m in msgs])
    return ConversationDetail(
        id=conv.id,
        title=conv.title,
        messages=[message_public(m, labels, fbs) for m in msgs],
    )


def message_public(m: Message, labels: dict, fbs: dict) -> MessagePublic:
    fb = fbs.get(m.id)
    return MessagePublic(
        id=m.id, role=m.role, content=m.content, parent_id=m.parent_id,
        adapter_version=labels.get(m.adapter_version_id, m.adapter_label) if m.adapter_version_id else None,
        feedback=FeedbackBrief(rating=fb.rating, reasons=fb.reasons, comment=fb.comment) if fb else None,
        alternative_group=m.alternative_group, alternative_index=m.alternative_index,
        finish_reason=m.finish_reason, created_at=m.created_at, origin=m.origin, best_of=m.best_of,
    )


@router.patch("/conversations/{conversation_id}", response_model=ConversationPublic)
def rename_conversation(conversation_id: IdPath, body: ConversationUpdate, user: CurrentUser, session: SessionDep) -> ConversationPublic:
    conv = crud.get_conversation(session, user_id=user.id, conversation_id=conversation_id)
    if conv is None:
        raise _not_found("conversation", conversation_id)
    conv = crud.rename_conversation(session, conv=conv, title=body.title)
    return ConversationPublic(id=conv.id, title=conv.title, updated_at=conv.updated_at)


@router.delete("/conversations/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_conversation(conversation_id: IdPath, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete a conversation. If it held ratings, the personal adapters trained on them stop serving
    and their files go (audit 2026-12-05, M3(b)); the next run learns from what is left."""
    conv = crud.get_conversation(session, user_id=user.id, conversation_id=conversation_id)
    if conv is None:
        raise _not_found("conversation", conversation_id)
    if crud.delete_conversation(session, conv=conv):
        adapter_store.erase_user_adapters(settings, session, user_id=user.id,
                                          reason="the user deleted a conversation they had rated in")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/messages/{message_id}/feedback", response_model=FeedbackPublic)
def rate_message(message_id: IdPath, body: FeedbackCreate, user: ApprovedUser, session: SessionDep, request: Request) -> FeedbackPublic:
    msg = crud.get_message(session, user_id=user.id, message_id=message_id)
    if msg is None or msg.role != "assistant":
        raise _not_found("message", message_id)
    if not is_generated_reply(msg):
        raise _not_generated(message_id)
    fb = crud.upsert_feedback(session, user_id=user.id, message_id=msg.id, rating=body.rating, reasons=body.reasons, comment=body.comment)
    request.app.state.metrics.feedback.labels(rating=fb.rating.value).inc()
    # the acknowledgement goes out only after the commit above
    return FeedbackPublic(id=fb.id, message_id=fb.message_id, rating=fb.rating, reasons=fb.reasons, comment=fb.comment, updated_at=fb.updated_at)


@router.post("/rankings", status_code=status.HTTP_201_CREATED, response_model=RankingPublic)
def rank(body: RankingCreate, user: ApprovedUser, session: SessionDep, request: Request) -> RankingPublic:
    msgs = [crud.get_message(session, user_id=user.id, message_id=i) for i in body.message_ids]
    missing = [i for i, m in zip(body.message_ids, msgs) if m is None or m.role != "assistant"]
    if missing:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"messages {missing} not found")
    for m in msgs:
        if not is_generated_reply(m):
            raise _not_generated(m.id)
    groups = {m.alternative_group for m in msgs}
    if len(groups) != 1 or None in groups:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "all message_ids must be alternative replies to one user turn")
    row = crud.upsert_ranking(session, user_id=user.id, group=groups.pop(), message_ids=body.message_ids)
    request.app.state.metrics.rankings.inc()
    return RankingPublic(id=row.id, message_ids=row.message_ids, alternative_group=row.alternative_group)


@router.get("/me/feedback/export")
def export_feedback(
    user: SessionUser, session: SessionDep,
    format: Annotated[Literal["json", "preference", "kto"], Query(description="json (everything, one document); preference or "
                      "kto: JSONL rows in TRL's conversational formats (see service/exports.py)")] = "json",
) -> Response:
    if format != "json":
        body = "".join(exports.jsonl(exports.rows(session, format, user_ids=[user.id])))
        return Response(body, media_type="application/x-ndjson",
                        headers={"Content-Disposition": f'attachment; filename="my-feedback-{format}.jsonl"'})
    fbs = crud.list_feedback(session, user_id=user.id)
    ranks = crud.list_rankings(session, user_id=user.id)
    replies = {m.id: m for m in (crud.get_message(session, user_id=user.id, message_id=f.message_id) for f in fbs) if m}
    body = {
        "user": {"id": user.id, "username": user.username},
        "feedback": [
            {"id": f.id, "message_id": f.message_id, "rating": f.rating.value, "reasons": f.reasons, "comment": f.comment,
             "reply": replies[f.message_id].content if f.message_id in replies else None,
             "created_at": f.created_at.isoformat(), "updated_at": f.updated_at.isoformat()} for f in fbs
        ],
        "rankings": [{"id": r.id, "message_ids": r.message_ids, "created_at": r.created_at.isoformat()} for r in ranks],
    }
    return JSONResponse(body, headers={"Content-Disposition": 'attachment; filename="my-feedback.json"'})


@router.get("/me/export")
def export_conversations(user: SessionUser, session: SessionDep) -> JSONResponse:
    """Every conversation of the user with all its messages (every branch), for keeping or moving."""
    convs = crud.list_conversations(session, user_id=user.id)
    out = []
    for conv in convs:
        msgs = crud.list_messages(session, conversation_id=conv.id)
        labels = crud.adapter_labels(session, ids={m.adapter_version_id for m in msgs if m.adapter_version_id})
        fbs = crud.feedback_for(session, user_id=user.id, message_ids=[m.id for m in msgs])
        out.append({"id": conv.id, "title": conv.title, "created_at": conv.created_at.isoformat(),
                    "updated_at": conv.updated_at.isoformat(),
                    "messages": [message_public(m, labels, fbs).model_dump(mode="json") for m in msgs]})
    return JSONResponse({"user": {"id": user.id, "username": user.username}, "conversations": out},
                        headers={"Content-Disposition": 'attachment; filename="my-conversations.json"'})


@router.delete("/me/feedback", status_code=status.HTTP_204_NO_CONTENT)
def delete_my_feedback(user: SessionUser, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete every rating and ranking of the user, and the personal adapters trained on them (they
    stop serving at once; their files are deleted; a job that snapshotted them before and finishes
    after serves nothing). The global adapter's next run no longer sees them, but each global version
    starts from the last, so some influence stays (the UI says so)."""
    crud.delete_feedback(session, user_id=user.id)
    adapter_store.erase_user_adapters(settings, session, user_id=user.id, reason="the user deleted their ratings")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/me", status_code=status.HTTP_204_NO_CONTENT)
def delete_my_account(user: SessionUser, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete the account: conversations, feedback, rankings, adapters and their files. The session
    ends with it (the user row is gone)."""
    if user.role == Role.operator:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the operator account cannot delete itself (ASSISTANT_ADMIN_PASSWORD recreates it)")
    adapter_store.erase_user_adapters(settings, session, user_id=user.id, reason="the user deleted their account")
    crud.delete_account(session, user_id=user.id)
    logger.info("user %s deleted their account", user.id)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(COOKIE_NAME, path="/")
    return response
