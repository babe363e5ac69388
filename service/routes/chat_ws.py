"""Streaming chat over the WebSocket ``/api/chat``.

Auth: the session cookie, accepted only when the ``Origin`` header is one of
the allowed origins (else close 1008), or a first frame ``{"type":"auth"}``.
Each reply is pumped by its own task; the receive loop stays free for
``cancel`` frames. Closing the socket cancels its generations, whose partial
replies are still stored.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import ValidationError
from starlette.websockets import WebSocketState

from service.auth import COOKIE_NAME, NOT_APPROVED, user_for_token
from service.chat import ChatError, ChatService, PlannedReply, Turn
from service.engine.base import EndEvent
from service.models import User, pk
from service.schemas import (
    AuthFrame,
    CancelFrame,
    ChatFrame,
    EndFrame,
    ErrorFrame,
    FrameUsage,
    FrameUser,
    PongFrame,
    ReadyFrame,
    RegenerateFrame,
    ServerFrame,
    StartFrame,
    TokenFrame,
    frame_json,
)

logger = logging.getLogger(__name__)
router = APIRouter()

MAX_FRAME_BYTES = 64 * 1024
AUTH_TIMEOUT_S = 10.0


class Connection:
    def __init__(self, ws: WebSocket, chat: ChatService, user: User,
                 revalidate: Callable[[], Awaitable[User | None]] | None = None) -> None:
        self.ws, self.chat, self.user = ws, chat, user
        self.revalidate = revalidate  # the identity again (signed out, key revoked, account deleted: None)
        self.tasks: dict[int, asyncio.Task] = {}
        self.lock = asyncio.Lock()
        self.open = True

    @property
    def user_id(self) -> int:
        return pk(self.user)

    async def send(self, frame: ServerFrame) -> None:
        if not self.open:
            return
        async with self.lock:
            try:
                await self.ws.send_json(frame_json(frame))
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.open = False

    async def error(self, code: str, detail: str) -> None:
        await self.send(ErrorFrame(code=code, detail=detail))

    async def start(self, turn: Turn) -> None:
        """Submit every planned reply; replies the engine refuses get one error frame."""
        started, error = await self.chat.submit_turn(self.user_id, turn)
        for reply, stream in started:
            await self.send(StartFrame(
                conversation_id=turn.conversation_id, user_message_id=turn.user_message_id, message_id=reply.message.id,
                alternative=reply.message.alternative_index, adapter_version=reply.resolved.label, policy=reply.resolved.policy))
            self.tasks[pk(reply.message)] = asyncio.create_task(self.pump(reply, stream))
        if error is not None:
            await self.error(error.code, error.detail)

    async def pump(self, reply: PlannedReply, stream) -> None:
        mid = pk(reply.message)
        try:
            async for ev in self.chat.relay(self.user_id, reply, stream):
                if isinstance(ev, EndEvent):
                    await self.send(EndFrame(
                        message_id=mid, finish_reason=ev.finish_reason, adapter_version=reply.resolved.label,
                        usage=FrameUsage(prompt_tokens=ev.prompt_tokens, completion_tokens=ev.completion_tokens),
                        detail="generation failed; see the server log" if ev.error else None,
                        best_of=reply.choice.record() if reply.choice is not None else None))
                elif ev.text:
                    await self.send(TokenFrame(message_id=mid, text=ev.text))
                if not self.open:  # the client left: stop generating, keep draining so the row is stored
                    self.chat.cancel(user_id=self.user_id, message_id=mid)
        finally:
            self.tasks.pop(mid, None)

    async def handle(self, raw: str) -> None:
        if len(raw) > MAX_FRAME_BYTES:
            await self.error("too_large", f"frames are limited to {MAX_FRAME_BYTES} bytes")
            return
        try:
            data = json.loads(raw)
            json.dumps(data, ensure_ascii=False).encode("utf-8")  # a lone surrogate (\ud800) raises here
        except (json.JSONDecodeError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
            await self.error("bad_frame", "frames must be JSON objects (not nested this deep)")
            return
        except UnicodeEncodeError:
            await self.error("bad_frame", "text must be valid Unicode (no lone surrogates)")
            return
        kind = data.get("type") if isinstance(data, dict) else None
        if kind in ("chat", "regenerate") and self.revalidate is not None:
            # a socket outlives no sign-out: "sign out everywhere", a password change, a revoked key or a
            # deleted account ends it at its next request (one indexed query per request)
            user = await self.revalidate()
            if user is None:
                await self.error("unauthorized", "this session has ended (signed out, key revoked or account deleted); "
                                                 "sign in again")
                self.open = False
                await self.ws.close(code=1008)
                return
            self.user = user
        if kind in ("chat", "regenerate") and not self.user.approved:
            await self.error("not_approved", NOT_APPROVED)
            return
        try:
            if kind == "chat":
                frame = ChatFrame.model_validate(data)
                params = await self.chat.user_sampling(self.user_id, max_new_tokens=frame.max_new_tokens,
                                                       temperature=frame.temperature)
                await self.start(await self.chat.start_turn(
                    user_id=self.user_id, conversation_id=frame.conversation_id, content=frame.content,
                    alternatives=frame.alternatives, params=params, parent_id=frame.parent_id, edit_of=frame.edit_of))
            elif kind == "regenerate":
                regen = RegenerateFrame.model_validate(data)
                params = await self.chat.user_sampling(self.user_id, max_new_tokens=regen.max_new_tokens,
                                                       temperature=regen.temperature)
                await self.start(await self.chat.start_regenerate(user_id=self.user_id, message_id=regen.message_id,
                                                                  params=params))
            elif kind == "cancel":
                cancel = CancelFrame.model_validate(data)
                if not self.chat.cancel(user_id=self.user_id, message_id=cancel.message_id):
                    await self.error("not_found", f"no running generation {cancel.message_id}")
            elif kind == "ping":
                await self.send(PongFrame())
            else:
                await self.error("bad_frame", "unknown frame type; expected chat, regenerate, cancel or ping")
        except ValidationError as exc:
            errs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            await self.error("bad_frame", errs)
        except ChatError as exc:
            await self.error(exc.code, exc.detail)

    async def close(self) -> None:
        self.open = False
        for mid in list(self.tasks):
            self.chat.cancel(user_id=self.user_id, message_id=mid)
        if self.tasks:
            # shielded: even if this handler is cancelled, the pumps finish and store the partial replies
            await asyncio.shield(asyncio.gather(*self.tasks.values(), return_exceptions=True))


def _user_for(ws: WebSocket, token: str | None) -> User | None:
    return user_for_token(ws.app.state.settings, ws.app.state.db, token)


@router.websocket("/api/chat")
async def chat_socket(ws: WebSocket) -> None:
    settings = ws.app.state.settings
    origin = (ws.headers.get("origin") or "").rstrip("/")
    address = ws.client.host if ws.client else "unknown"
    if ws.app.state.ws_handshakes.hit(address) is not None:
        logger.warning("websocket handshake from %s refused: over %d per minute", address, settings.handshake_limit)
        await ws.close(code=1008, reason="too many connections from this address")
        return
    cookie = ws.cookies.get(COOKIE_NAME)
    user = None
    if cookie:
        if origin not in settings.origins:
            logger.warning("websocket with a session cookie from a foreign origin %r refused", origin)
            await ws.close(code=1008, reason="origin not allowed")
            return
        user = await asyncio.to_thread(_user_for, ws, cookie)
    await ws.accept()
    frame_token = None
    if user is None:
        try:
            raw = await asyncio.wait_for(ws.receive_text(), timeout=AUTH_TIMEOUT_S)
            frame = AuthFrame.model_validate_json(raw)
            frame_token = frame.token
            user = await asyncio.to_thread(_user_for, ws, frame.token)
        except (asyncio.TimeoutError, ValidationError, WebSocketDisconnect, ValueError):
            user = None
        if user is None:
            if ws.client_state == WebSocketState.CONNECTED:
                await ws.send_json(frame_json(ErrorFrame(code="unauthorized", detail="send {\"type\":\"auth\",\"token\":...} first")))
                await ws.close(code=1008)
            return
    user_id = pk(user)
    sockets: dict[int, int] = ws.app.state.ws_sockets
    if sockets.get(user_id, 0) >= settings.ws_per_user:
        await ws.send_json(frame_json(ErrorFrame(
            code="too_many", detail=f"at most {settings.ws_per_user} open chat connections per user; close another tab")))
        await ws.close(code=1008)
        return
    sockets[user_id] = sockets.get(user_id, 0) + 1
    token = frame_token if frame_token is not None else cookie  # what signed this socket in

    async def revalidate() -> User | None:
        return await asyncio.to_thread(_user_for, ws, token)

    conn = Connection(ws, ws.app.state.chat, user, revalidate)
    metrics = ws.app.state.metrics
    metrics.ws_connections.inc()
    await conn.send(ReadyFrame(user=FrameUser(id=user.id, username=user.username, role=user.role.value,
                                              approved=user.approved)))
    try:
        while True:
            try:
                msg = await asyncio.wait_for(ws.receive(), timeout=settings.ws_idle_timeout_s)
            except asyncio.TimeoutError:
                if conn.tasks:  # replies still streaming: not idle
                    continue
                await conn.error("idle", f"closed after {settings.ws_idle_timeout_s:.0f} s without a frame")
                await ws.close(code=1000)
                break
            if msg["type"] == "websocket.disconnect":
                break
            text = msg.get("text")
            if text is None:
                await conn.error("bad_frame", "send text frames with JSON")
                continue
            await conn.handle(text)
    except WebSocketDisconnect:
        pass
    finally:
        sockets[user_id] -= 1
        if not sockets[user_id]:
            del sockets[user_id]
        metrics.ws_connections.dec()
        await conn.close()
