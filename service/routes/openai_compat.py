"""OpenAI-compatible chat completions: ``POST /v1/chat/completions``, ``GET /v1/models``.

The completion ``id`` is the stored assistant message id (as a string), so a client can rate it
with ``POST /api/messages/{id}/feedback``; with ``n`` > 1 every choice carries its own
``message_id``, and the choices are one alternative group, so ``POST /api/rankings`` ranks them.

Models: ``<name>`` serves the caller's own policy (their adapter, else the global one, else the
base), ``<name>:global`` and ``<name>:base`` the others; anything else is 404 ``model_not_found``.
Every error under ``/v1`` is OpenAI's error object (see ``openai_error``), and parameters this
server does not implement are refused by name (400), never silently ignored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse

from service.auth import ApprovedUser, Caller, token_from_request
from service.chat import ChatError, ChatService
from service.engine.base import EndEvent, TokenLogprob
from service.external_chats import CHAT_ID_HEADER, MAX_CHAT_ID
from service.models import pk
from service.proxy import is_proxy_key, is_task_prompt
from service.schemas import (
    OAIAssistantMessage,
    OAIChatCompletion,
    OAIChatCompletionChunk,
    OAIChatRequest,
    OAIChoice,
    OAIChunkChoice,
    OAIDelta,
    OAILogprobs,
    OAIModel,
    OAIModelList,
    OAITokenLogprob,
    OAITopLogprob,
    OAIUsage,
    chunk_json,
)

router = APIRouter(prefix="/v1", tags=["openai"])
_DRAINING: set[asyncio.Task] = set()
# A streamed response whose body has not started this long after the route returned was abandoned
# before its first byte (issue 12, finding 18); its replies are cancelled and stored.
UNREAD_STREAM_TIMEOUT_S = 30.0

POLICIES = {"": None, ":global": "global", ":base": "base"}  # model id suffix -> policy
FINISH = {"stop": "stop", "length": "length", "cancelled": "stop", "error": "stop", "content_filter": "content_filter"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
               409: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}


class OpenAIError(HTTPException):
    """An HTTP error that names the offending parameter and OpenAI's error code."""

    def __init__(self, status_code: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(status_code, message)
        self.param, self.code = param, code


def openai_error(status_code: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict | None = None) -> JSONResponse:
    """OpenAI's error body, ``{"error": {"message", "type", "param", "code"}}``: what its SDKs parse."""
    kind = ERROR_TYPES.get(status_code, "server_error" if status_code >= 500 else "invalid_request_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                        status_code=status_code, headers=headers)


def _model_name(request: Request) -> str:
    return request.app.state.settings.model.split("/")[-1].replace("embedded:", "")


@router.get("/models", response_model=OAIModelList)
def models(request: Request, _: Caller) -> OAIModelList:
    name = _model_name(request)
    return OAIModelList(data=[OAIModel(id=name + suffix) for suffix in POLICIES])


def _policy(request: Request, model: str | None) -> str | None:
    name = _model_name(request)
    if model is None:
        return None
    for suffix, policy in POLICIES.items():
        if model == name + suffix:
            return policy
    raise OpenAIError(404, f"The model '{model}' does not exist; GET /v1/models lists {name}, {name}:global and {name}:base",
                      param="model", code="model_not_found")


def _chat_id(request: Request) -> str | None:
    """The front end's own id of the chat (``service.external_chats``), if it sends one."""
    value = request.headers.get(CHAT_ID_HEADER, "").strip()
    if not value:
        return None
    if len(value) > MAX_CHAT_ID or not value.isprintable():
        raise OpenAIError(400, f"{CHAT_ID_HEADER} must be at most {MAX_CHAT_ID} printable characters",
                          param=CHAT_ID_HEADER, code="invalid_value")
    return value


def _refuse_unsupported(body: OAIChatRequest) -> None:
    """A clear 400 for what this server does not do, instead of an answer that ignores it."""
    # Tools offered with tool_choice auto (the default) or none let the model answer in plain text, as
    # OpenAI's semantics allow: Open WebUI sends its built-in tools with every request (issue 31). Only a
    # required or named tool call, which plain text cannot satisfy, is refused.
    if body.tool_choice not in (None, "none", "auto"):
        raise OpenAIError(400, "this server answers in plain text and never calls tools: tool_choice must be \"auto\" or "
                          "\"none\"", param="tool_choice", code="unsupported_parameter")
    if body.response_format and body.response_format.get("type") not in (None, "text"):
        raise OpenAIError(400, "response_format: only {\"type\": \"text\"} is supported (no JSON mode)", param="response_format",
                          code="unsupported_parameter")
    if body.top_logprobs is not None and not body.logprobs:
        raise OpenAIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    if body.logprobs and body.stop_strings():
        raise OpenAIError(400, "logprobs together with stop strings are not supported (the text is cut where a stop "
                          "string starts, not at a token)", param="logprobs", code="unsupported_parameter")
    for i, m in enumerate(body.messages):
        if m.role == "tool":
            raise OpenAIError(400, "tool messages are not supported (no tools)", param=f"messages[{i}].role", code="unsupported_parameter")
        if isinstance(m.content, list):
            for j, part in enumerate(m.content):
                if part.type != "text" or part.text is None:
                    raise OpenAIError(400, f"content parts of type '{part.type}' are not supported; send text parts",
                                      param=f"messages[{i}].content[{j}]", code="unsupported_content_type")
    last = body.messages[-1].role
    # A last assistant message is a reply to continue (Open WebUI's Continue button): it needs the
    # user's turn it answers.
    if last != "user" and not (last == "assistant" and any(m.role == "user" for m in body.messages[:-1])):
        raise OpenAIError(400, "the last message must have role 'user', or be a partial 'assistant' reply to continue "
                          "after a 'user' message", param="messages")
    if body.stream_options is not None and not body.stream:
        raise OpenAIError(400, "stream_options is only allowed with stream: true", param="stream_options")


def _http(exc: ChatError) -> OpenAIError:
    return OpenAIError(exc.http_status, exc.detail, code=exc.code)


# Documents both answers: JSON, or server-sent events when the request says "stream": true.
@router.post("/chat/completions", response_model=OAIChatCompletion,
             responses={200: {"content": {"application/json": {}, "text/event-stream": {}}}})
async def chat_completions(body: OAIChatRequest, request: Request, user: ApprovedUser):
    chat: ChatService = request.app.state.chat
    user_id = pk(user)
    _refuse_unsupported(body)
    policy = _policy(request, body.model)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    # A front end's background call (title, tags, follow-ups): served, then not kept, so it never
    # lists as a conversation nor becomes a training prompt. Only a trusted proxy's: anyone else's
    # "### Task:" is an ordinary turn, stored and counted (issue 28, L4).
    task = is_task_prompt(messages) and is_proxy_key(request.app.state.settings, token_from_request(request))
    chat_id = None if task else _chat_id(request)
    try:
        params = await chat.user_sampling(user_id, max_new_tokens=body.max_completion_tokens or body.max_tokens,
                                          temperature=body.temperature, top_p=body.top_p, seed=body.seed,
                                          presence_penalty=body.presence_penalty, frequency_penalty=body.frequency_penalty)
        if body.logprobs:
            params = dataclasses.replace(params, logprobs=body.top_logprobs or 0)
        turn = await chat.add_plain_conversation(user_id=user_id, messages=messages, params=params, n=body.n, policy=policy,
                                                 background=task, chat_id=chat_id)
    except ChatError as exc:
        raise _http(exc) from exc
    started, error = await chat.submit_turn(user_id, turn)
    if error is not None:
        for reply, _ in started:  # all or nothing: the ones that did start stop at once (stored as cancelled)
            chat.cancel(user_id=user_id, message_id=pk(reply.message))
        for reply, stream in started:
            async for _ in chat.relay(user_id, reply, stream):
                pass
        raise _http(error)
    stop = body.stop_strings()
    completion_id = str(started[0][0].message.id)
    created = int(time.time())
    model = body.model or _model_name(request)
    ids = {"id": completion_id, "created": created, "model": model, "adapter_version": started[0][0].resolved.label,
           "conversation_id": turn.conversation_id}

    def usage(ends: list[EndEvent]) -> OAIUsage:
        prompt = ends[0].prompt_tokens if ends else 0
        completion = sum(e.completion_tokens for e in ends)
        return OAIUsage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    if not body.stream:
        async def collect(reply, stream) -> tuple[str, EndEvent, list]:
            parts: list[str] = []
            end: EndEvent | None = None
            lps: list[TokenLogprob] = []
            async for ev in chat.relay(user_id, reply, stream, stop):
                if isinstance(ev, EndEvent):
                    end = ev
                else:
                    parts.append(ev.text)
                    lps.extend(ev.logprobs or ())
            assert end is not None, "a relay ends with its reply's EndEvent (RequestStream stops only after one)"
            return "".join(parts), end, lps

        results = await asyncio.gather(*(collect(r, s) for r, s in started))
        if task:
            await chat.forget_conversation(user_id, turn.conversation_id)
        return OAIChatCompletion(
            choices=[OAIChoice(index=k, message=OAIAssistantMessage(content=text), finish_reason=FINISH.get(end.finish_reason, "stop"),
                               logprobs=_logprobs(lps) if body.logprobs else None, message_id=reply.message.id)
                     for k, ((reply, _), (text, end, lps)) in enumerate(zip(started, results))],
            usage=usage([end for _, end, _ in results]), **ids)

    def chunk(choices: list[OAIChunkChoice], usage_: OAIUsage | None = None) -> str:
        return f"data: {json.dumps(chunk_json(OAIChatCompletionChunk(choices=choices, usage=usage_, **ids)))}\n\n"

    relays = [chat.relay(user_id, reply, stream, stop) for reply, stream in started]
    body_started, abandoned = asyncio.Event(), asyncio.Event()

    async def events() -> AsyncIterator[str]:
        body_started.set()
        if abandoned.is_set():  # started after the guard below gave the replies up
            yield f"data: {json.dumps({'error': {'message': 'the response started too late; the reply was cancelled', 'type': 'server_error'}})}\n\n"
            return
        # One queue merges the choices' events in arrival order; each pump ends with (k, None).
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(k: int, relay) -> None:
            try:
                async for ev in relay:
                    await queue.put((k, ev))
            finally:
                await queue.put((k, None))

        tasks = [asyncio.create_task(pump(k, relay)) for k, relay in enumerate(relays)]
        done = 0
        ends: list[EndEvent] = []
        try:
            for k, (reply, _) in enumerate(started):
                yield chunk([OAIChunkChoice(index=k, delta=OAIDelta(role="assistant", content=""), message_id=reply.message.id)])
            while done < len(tasks):
                k, ev = await queue.get()
                if ev is None:
                    done += 1
                elif isinstance(ev, EndEvent):
                    ends.append(ev)
                    yield chunk([OAIChunkChoice(index=k, delta=OAIDelta(), finish_reason=FINISH.get(ev.finish_reason, "stop"))])
                elif ev.text or (body.logprobs and ev.logprobs):
                    yield chunk([OAIChunkChoice(index=k, delta=OAIDelta(content=ev.text),
                                                logprobs=_logprobs(ev.logprobs or []) if body.logprobs else None)])
            if body.stream_options is not None and body.stream_options.include_usage:
                yield chunk([], usage(ends))  # OpenAI's usage chunk: after the last choice, with no choices
            if task:
                await chat.forget_conversation(user_id, turn.conversation_id)
            yield "data: [DONE]\n\n"
        finally:
            if done < len(tasks):  # the client went away: free the compute, still store what was generated
                for reply, _ in started:
                    chat.cancel(user_id=user_id, message_id=pk(reply.message))
                # the pumps keep draining their relays (each stores its reply) with no reader left;
                # held here so the event loop's weak references do not drop them mid-reply
                for t in tasks:
                    _keep_until_done(t)

    async def unread_guard() -> None:
        """Issue 12, finding 18: a client that leaves before the response starts never runs ``events()``
        (nor its ``finally``), and its replies would stay "generating" with the engine still at them.
        This clean-up depends on nothing but time: unread after ``UNREAD_STREAM_TIMEOUT_S``, the
        replies are cancelled and their relays drained, which stores each one as cancelled."""
        try:
            await asyncio.wait_for(body_started.wait(), UNREAD_STREAM_TIMEOUT_S)
            return
        except asyncio.TimeoutError:
            abandoned.set()
        for reply, _ in started:
            chat.cancel(user_id=user_id, message_id=pk(reply.message))
        for relay in relays:
            async for _ in relay:
                pass

    _keep_until_done(asyncio.create_task(unread_guard()))
    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _logprobs(items) -> OAILogprobs:
    """OpenAI's ``logprobs`` object: ``{"content": [{token, logprob, bytes, top_logprobs}]}``."""
    return OAILogprobs(content=[OAITokenLogprob(token=t.token, logprob=t.logprob, bytes=list(t.token.encode("utf-8")),
                                                top_logprobs=[OAITopLogprob(token=a, logprob=lp, bytes=list(a.encode("utf-8")))
                                                              for a, lp in t.top]) for t in items])


def _keep_until_done(task: asyncio.Task) -> None:
    """Hold a task no one awaits, so the event loop's weak references do not drop it mid-way."""
    _DRAINING.add(task)
    task.add_done_callback(_DRAINING.discard)


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
def unknown_endpoint(rest: str, request: Request):
    raise OpenAIError(404, f"Unknown endpoint {request.method} /v1/{rest}; this server implements GET /v1/models and "
                           "POST /v1/chat/completions", code="unknown_url")
