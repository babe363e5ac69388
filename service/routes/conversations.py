"""Conversations, feedback and rankings: thin routes over service.crud."""

from __future__ import annotations

import json
import logging
from typing import Annotated, AsyncIterator, Literal

from anyio import to_thread
from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from fastapi.responses import JSONResponse, StreamingResponse
from sqlmodel import Session

from service import adapter_store, crud, exports
from service.auth import COOKIE_NAME, ApprovedUser, CurrentUser, SessionDep, SessionUser, SettingsDep
from service.heavy_reads import HeavyReads, SearchTimeout, deadline
from service.models import Message, Role, is_generated_reply, pk
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
async def list_conversations(
    user: CurrentUser, request: Request, settings: SettingsDep,
    q: Annotated[str | None, Query(max_length=200, pattern=NO_NUL, description="Search titles and message text (yours only).")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 200,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> list[ConversationPublic]:
    """The user's conversations, most recently updated first; with ``q``, those whose title or any
    message matches it, each with a snippet of the first matching message. A search counts as a
    heavy read (``service.heavy_reads``: a per-user rate, threads of its own, a deadline)."""
    db = request.app.state.db
    user_id = pk(user)
    if q is None or not q.strip():
        def page() -> list[ConversationPublic]:
            with Session(db) as session:
                return [ConversationPublic(id=c.id, title=c.title, updated_at=c.updated_at)
                        for c in crud.list_conversations(session, user_id=user_id, limit=limit, offset=offset)]

        return await to_thread.run_sync(page)
    query = q.strip()

    def search() -> list[ConversationPublic]:
        with Session(db) as session, deadline(session, settings.search_timeout_s):
            hits = crud.search_conversations(session, user_id=user_id, query=query, limit=limit, offset=offset)
            return [ConversationPublic(id=c.id, title=c.title, updated_at=c.updated_at, snippet=_snippet(text, query))
                    for c, text in hits]

    heavy: HeavyReads = request.app.state.heavy_reads
    heavy.admit(user_id)
    try:
        return await heavy.run(search)
    except SearchTimeout as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{exc} and was stopped; search for other words, "
                            "or fewer", headers={"Retry-After": "1"}) from exc


@router.get("/conversations/{conversation_id}", response_model=ConversationDetail)
def get_conversation(conversation_id: IdPath, user: CurrentUser, session: SessionDep) -> ConversationDetail:
    user_id = pk(user)
    conv = crud.get_conversation(session, user_id=user_id, conversation_id=conversation_id)
    if conv is None:
        raise _not_found("conversation", conversation_id)
    msgs = crud.list_messages(session, conversation_id=pk(conv))
    labels = crud.adapter_labels(session, ids={m.adapter_version_id for m in msgs if m.adapter_version_id})
    fbs = crud.feedback_for(session, user_id=user_id, message_ids=[pk(m) for m in msgs])
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
        feedback=FeedbackBrief(rating=fb.rating, reasons=fb.reasons, comment=fb.comment, score=fb.score) if fb else None,
        alternative_group=m.alternative_group, alternative_index=m.alternative_index,
        finish_reason=m.finish_reason, created_at=m.created_at, origin=m.origin, best_of=m.best_of,
    )


@router.patch("/conversations/{conversation_id}", response_model=ConversationPublic)
def rename_conversation(conversation_id: IdPath, body: ConversationUpdate, user: CurrentUser, session: SessionDep) -> ConversationPublic:
    conv = crud.get_conversation(session, user_id=pk(user), conversation_id=conversation_id)
    if conv is None:
        raise _not_found("conversation", conversation_id)
    conv = crud.rename_conversation(session, conv=conv, title=body.title)
    return ConversationPublic(id=conv.id, title=conv.title, updated_at=conv.updated_at)


@router.delete("/conversations/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_conversation(conversation_id: IdPath, user: CurrentUser, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete a conversation. If it held ratings, the personal adapters trained on them stop serving
    and their files go (audit 2026-12-05, M3(b)); the next run learns from what is left."""
    user_id = pk(user)
    conv = crud.get_conversation(session, user_id=user_id, conversation_id=conversation_id)
    if conv is None:
        raise _not_found("conversation", conversation_id)
    if crud.delete_conversation(session, conv=conv):
        adapter_store.erase_user_adapters(settings, session, user_id=user_id,
                                          reason="the user deleted a conversation they had rated in")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/messages/{message_id}/feedback", response_model=FeedbackPublic)
def rate_message(message_id: IdPath, body: FeedbackCreate, user: ApprovedUser, session: SessionDep, request: Request) -> FeedbackPublic:
    user_id = pk(user)
    msg = crud.get_message(session, user_id=user_id, message_id=message_id)
    if msg is None or msg.role != "assistant":
        raise _not_found("message", message_id)
    if not is_generated_reply(msg):
        raise _not_generated(message_id)
    fb = crud.upsert_feedback(session, user_id=user_id, message_id=pk(msg), rating=body.rating, reasons=body.reasons,
                              comment=body.comment, score=body.score)
    request.app.state.metrics.feedback.labels(rating=fb.rating.value).inc()
    # the acknowledgement goes out only after the commit above
    return FeedbackPublic(id=fb.id, message_id=fb.message_id, rating=fb.rating, reasons=fb.reasons, comment=fb.comment,
                          updated_at=fb.updated_at, score=fb.score)


@router.post("/rankings", status_code=status.HTTP_201_CREATED, response_model=RankingPublic)
def rank(body: RankingCreate, user: ApprovedUser, session: SessionDep, request: Request) -> RankingPublic:
    user_id = pk(user)
    found = [crud.get_message(session, user_id=user_id, message_id=i) for i in body.message_ids]
    missing = [i for i, m in zip(body.message_ids, found) if m is None or m.role != "assistant"]
    if missing:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"messages {missing} not found")
    msgs = [m for m in found if m is not None]
    for m in msgs:
        if not is_generated_reply(m):
            raise _not_generated(pk(m))
    groups = {m.alternative_group for m in msgs}
    group = groups.pop() if len(groups) == 1 else None
    if group is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, "all message_ids must be alternative replies to one user turn")
    row = crud.upsert_ranking(session, user_id=user_id, group=group, message_ids=body.message_ids)
    request.app.state.metrics.rankings.inc()
    return RankingPublic(id=row.id, message_ids=row.message_ids, alternative_group=row.alternative_group)


@router.get("/me/feedback/export")
async def export_feedback(
    user: SessionUser, request: Request,
    format: Annotated[Literal["json", "preference", "kto"], Query(description="json (everything, one document); preference or "
                      "kto: JSONL rows in TRL's conversational formats (see service/exports.py)")] = "json",
) -> Response:
    """The user's ratings and rankings (a heavy read: ``service.heavy_reads``)."""
    db, heavy = request.app.state.db, request.app.state.heavy_reads
    user_id = pk(user)
    heavy.admit(user_id)
    if format != "json":
        def lines() -> str:
            with Session(db) as session:
                return "".join(exports.jsonl(exports.rows(session, format, user_ids=[user_id])))

        return Response(await heavy.run(lines), media_type="application/x-ndjson",
                        headers={"Content-Disposition": f'attachment; filename="my-feedback-{format}.jsonl"'})

    def document() -> dict:
        with Session(db) as session:
            fbs = crud.list_feedback(session, user_id=user_id)
            ranks = crud.list_rankings(session, user_id=user_id)
            replies = {m.id: m for m in (crud.get_message(session, user_id=user_id, message_id=f.message_id) for f in fbs) if m}
            return {
                "user": {"id": user_id, "username": user.username},
                "feedback": [
                    {"id": f.id, "message_id": f.message_id, "rating": f.rating.value, "reasons": f.reasons, "comment": f.comment,
                     "score": f.score,
                     "reply": replies[f.message_id].content if f.message_id in replies else None,
                     "created_at": f.created_at.isoformat(), "updated_at": f.updated_at.isoformat()} for f in fbs
                ],
                "rankings": [{"id": r.id, "message_ids": r.message_ids, "created_at": r.created_at.isoformat()} for r in ranks],
            }

    return JSONResponse(await heavy.run(document), headers={"Content-Disposition": 'attachment; filename="my-feedback.json"'})


def _dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


async def _conversations_document(db, heavy: HeavyReads, user_id: int, username: str) -> AsyncIterator[str]:
    """The export's JSON document, one conversation at a time (memory: one conversation, not all)."""
    def ids() -> list[int]:
        with Session(db) as session:
            return [pk(c) for c in crud.list_conversations(session, user_id=user_id)]

    def one(conversation_id: int) -> str | None:
        with Session(db) as session:
            conv = crud.get_conversation(session, user_id=user_id, conversation_id=conversation_id)
            if conv is None:  # deleted while the export ran
                return None
            msgs = crud.list_messages(session, conversation_id=pk(conv))
            labels = crud.adapter_labels(session, ids={m.adapter_version_id for m in msgs if m.adapter_version_id})
            fbs = crud.feedback_for(session, user_id=user_id, message_ids=[pk(m) for m in msgs])
            return _dumps({"id": conv.id, "title": conv.title, "created_at": conv.created_at.isoformat(),
                           "updated_at": conv.updated_at.isoformat(),
                           "messages": [message_public(m, labels, fbs).model_dump(mode="json") for m in msgs]})

    yield '{"user":' + _dumps({"id": user_id, "username": username}) + ',"conversations":['
    first = True
    for conversation_id in await heavy.run(ids):
        piece = await heavy.run(lambda: one(conversation_id))
        if piece is not None:
            yield ("" if first else ",") + piece
            first = False
    yield "]}"


@router.get("/me/export")
async def export_conversations(user: SessionUser, request: Request) -> StreamingResponse:
    """Every conversation of the user with all its messages (every branch), for keeping or moving;
    streamed one conversation at a time (a heavy read: ``service.heavy_reads``)."""
    heavy: HeavyReads = request.app.state.heavy_reads
    user_id = pk(user)
    heavy.admit(user_id)
    return StreamingResponse(_conversations_document(request.app.state.db, heavy, user_id, user.username),
                             media_type="application/json",
                             headers={"Content-Disposition": 'attachment; filename="my-conversations.json"'})


@router.delete("/me/feedback", status_code=status.HTTP_204_NO_CONTENT)
def delete_my_feedback(user: SessionUser, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete every rating and ranking of the user, and the personal adapters trained on them (they
    stop serving at once; their files are deleted; a job that snapshotted them before and finishes
    after serves nothing). The global adapter serves on until its next run, which starts fresh rather
    than from a version that learned from them (``adapter_store.learned_from_deleted_labels``)."""
    user_id = pk(user)
    crud.delete_feedback(session, user_id=user_id)
    adapter_store.erase_user_adapters(settings, session, user_id=user_id, reason="the user deleted their ratings")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/me", status_code=status.HTTP_204_NO_CONTENT)
def delete_my_account(user: SessionUser, session: SessionDep, settings: SettingsDep) -> Response:
    """Delete the account: conversations, feedback, rankings, adapters and their files. The session
    ends with it (the user row is gone)."""
    if user.role == Role.operator:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the operator account cannot delete itself (ASSISTANT_ADMIN_PASSWORD recreates it)")
    user_id = pk(user)
    adapter_store.erase_user_adapters(settings, session, user_id=user_id, reason="the user deleted their account")
    crud.delete_account(session, user_id=user_id)
    logger.info("user %s deleted their account", user_id)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(COOKIE_NAME, path="/")
    return response
