"""OpenAI-compatible chat completions: ``POST /v1/chat/completions``, ``GET /v1/models``.

The completion ``id`` is the stored assistant message id (as a string), so a
client can rate it with ``POST /api/messages/{id}/feedback``. Replies come from
the caller's own adapter, like the web chat.
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import StreamingResponse

from service.auth import ApprovedUser, CurrentUser
from service.chat import ChatError, ChatService
from service.engine.base import EndEvent
from service.schemas import OAIChatRequest

router = APIRouter(prefix="/v1", tags=["openai"])


def _model_name(request: Request) -> str:
    return request.app.state.settings.model.split("/")[-1].replace("embedded:", "")


@router.get("/models")
def models(request: Request, _: CurrentUser) -> dict:
    name = _model_name(request)
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "assistant"}]}


def _http(exc: ChatError) -> HTTPException:
    return HTTPException(exc.http_status, exc.detail)


# Documents both answers: JSON, or server-sent events when the request says "stream": true.
@router.post("/chat/completions", responses={200: {"content": {"application/json": {}, "text/event-stream": {}}}})
async def chat_completions(body: OAIChatRequest, request: Request, user: ApprovedUser):
    chat: ChatService = request.app.state.chat
    if body.messages[-1].role != "user":
        raise HTTPException(422, "the last message must have role 'user'")
    try:
        params = await chat.user_sampling(user.id, max_new_tokens=body.max_completion_tokens or body.max_tokens,
                                          temperature=body.temperature, top_p=body.top_p, seed=body.seed)
        turn = await chat.add_plain_conversation(user_id=user.id, messages=[m.model_dump() for m in body.messages], params=params)
    except ChatError as exc:
        raise _http(exc) from exc
    started, error = await chat.submit_turn(user.id, turn)
    if error is not None:
        raise _http(error)
    reply, stream = started[0]
    completion_id = str(reply.message.id)
    created = int(time.time())
    model = _model_name(request)
    finish_map = {"stop": "stop", "length": "length", "cancelled": "stop", "error": "stop"}
    extra = {"adapter_version": reply.resolved.label, "conversation_id": turn.conversation_id}

    if not body.stream:
        parts: list[str] = []
        end: EndEvent | None = None
        async for ev in chat.relay(user.id, reply, stream):
            if isinstance(ev, EndEvent):
                end = ev
            else:
                parts.append(ev.text)
        assert end is not None
        return {
            "id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                         "finish_reason": finish_map.get(end.finish_reason, "stop")}],
            "usage": {"prompt_tokens": end.prompt_tokens, "completion_tokens": end.completion_tokens,
                      "total_tokens": end.prompt_tokens + end.completion_tokens},
            **extra,
        }

    def chunk(delta: dict, finish: str | None, usage: dict | None = None) -> str:
        body_ = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        if usage is not None:
            body_["usage"] = usage
        return f"data: {json.dumps(body_)}\n\n"

    relay = chat.relay(user.id, reply, stream)

    async def drain() -> None:
        async for _ in relay:  # stores the partial reply when the engine ends it
            pass

    async def events():
        done = False
        try:
            yield chunk({"role": "assistant", "content": ""}, None)
            async for ev in relay:
                if isinstance(ev, EndEvent):
                    usage = {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens,
                             "total_tokens": ev.prompt_tokens + ev.completion_tokens}
                    yield chunk({}, finish_map.get(ev.finish_reason, "stop"), usage)
                elif ev.text:
                    yield chunk({"content": ev.text}, None)
            done = True
            yield "data: [DONE]\n\n"
        finally:
            if not done:  # the client went away: free the compute, still store what was generated
                chat.cancel(user_id=user.id, message_id=reply.message.id)
                asyncio.get_running_loop().create_task(drain())

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
