"""A client of the public HTTP/WebSocket contract (README "The API"), and nothing else.

The simulation talks to the service only through this class, so the same harness can exercise a
deployed instance: register, sign in, chat over ``/api/chat`` (first frame ``{"type":"auth"}``),
rate (``POST /api/messages/{id}/feedback``), rank (``POST /api/rankings``), and, with the operator
account, start a training run (``POST /api/admin/training-runs``) and poll it
(``GET /api/admin/training-runs/{id}``).

It imports nothing from ``service`` or ``learning``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

logger = logging.getLogger(__name__)

FINISHED_RUN_STATES = ("succeeded", "failed")


class ContractError(RuntimeError):
    """The service answered something the contract does not allow for this request."""

    def __init__(self, what: str, status: int | None = None, code: str | None = None, detail: str = "") -> None:
        super().__init__(f"{what}: {status or code} {detail}".strip())
        self.status, self.code, self.detail = status, code, detail


@dataclass
class Reply:
    message_id: int
    alternative: int
    text: str = ""
    adapter_version: str | None = None
    policy: str | None = None
    finish_reason: str | None = None


@dataclass
class Turn:
    conversation_id: int
    user_message_id: int
    replies: list[Reply] = field(default_factory=list)


def _raise_for(what: str, r: httpx.Response, *ok: int) -> None:
    if r.status_code not in ok:
        try:
            detail = r.json().get("detail", r.text)
        except (ValueError, AttributeError):
            detail = r.text
        raise ContractError(what, status=r.status_code, detail=str(detail)[:500])


class ChatSocket:
    """One authenticated ``/api/chat`` WebSocket; one turn at a time."""

    def __init__(self, ws) -> None:
        self.ws = ws

    async def chat(self, content: str, *, alternatives: int = 1, max_new_tokens: int | None = None,
                   temperature: float | None = None, timeout_s: float = 600.0) -> Turn:
        frame: dict[str, Any] = {"type": "chat", "conversation_id": None, "content": content, "alternatives": alternatives}
        if max_new_tokens is not None:
            frame["max_new_tokens"] = max_new_tokens
        if temperature is not None:
            frame["temperature"] = temperature
        await self.ws.send(json.dumps(frame))
        turn: Turn | None = None
        replies: dict[int, Reply] = {}
        ended = 0
        deadline = time.monotonic() + timeout_s
        while ended < alternatives:
            raw = await asyncio.wait_for(self.ws.recv(), timeout=max(1.0, deadline - time.monotonic()))
            f = json.loads(raw)
            kind = f.get("type")
            if kind == "error":
                raise ContractError("chat", code=f.get("code"), detail=f.get("detail", ""))
            if kind == "start":
                if turn is None:
                    turn = Turn(f["conversation_id"], f["user_message_id"])
                reply = Reply(f["message_id"], f.get("alternative", 0), adapter_version=f.get("adapter_version"),
                              policy=f.get("policy"))
                replies[reply.message_id] = reply
                turn.replies.append(reply)
            elif kind == "token":
                replies[f["message_id"]].text += f.get("text", "")
            elif kind == "end":
                r = replies[f["message_id"]]
                r.finish_reason = f.get("finish_reason")
                r.adapter_version = f.get("adapter_version", r.adapter_version)
                ended += 1
        assert turn is not None
        turn.replies.sort(key=lambda r: r.alternative)
        return turn


class AssistantClient:
    """Async client for one service base URL (``http://host:port``)."""

    def __init__(self, base_url: str, *, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "AssistantClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    @staticmethod
    def _auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    # --- accounts --------------------------------------------------------------------------------
    async def healthy(self) -> bool:
        try:
            return (await self.http.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    async def wait_healthy(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not await self.healthy():
            if time.monotonic() > deadline:
                raise ContractError(f"{self.base_url}/healthz did not answer 200 within {timeout_s:.0f} s; is the service running?")
            await asyncio.sleep(0.5)

    async def register(self, username: str, password: str) -> bool:
        """True if created, False if the name was taken already (409)."""
        r = await self.http.post("/api/auth/register", json={"username": username, "password": password})
        _raise_for(f"register {username}", r, 201, 409)
        return r.status_code == 201

    async def token(self, username: str, password: str) -> str:
        r = await self.http.post("/api/auth/token", data={"username": username, "password": password})
        _raise_for(f"sign in {username}", r, 200)
        self.http.cookies.clear()  # bearer tokens only: several users share this client
        return r.json()["access_token"]

    async def me(self, token: str) -> dict:
        r = await self.http.get("/api/me", headers=self._auth(token))
        _raise_for("me", r, 200)
        return r.json()

    # --- chat and ratings ------------------------------------------------------------------------
    def ws_url(self) -> str:
        return ("wss://" if self.base_url.startswith("https://") else "ws://") + self.base_url.split("://", 1)[1] + "/api/chat"

    def chat_socket(self, token: str) -> "_SocketContext":
        """``async with client.chat_socket(token) as sock: turn = await sock.chat(...)``"""
        return _SocketContext(self.ws_url(), token)

    async def feedback(self, token: str, message_id: int, rating: str, reasons: Sequence[str] = (),
                       comment: str | None = None) -> dict:
        body: dict[str, Any] = {"rating": rating, "reasons": list(reasons)}
        if comment:
            body["comment"] = comment
        r = await self.http.post(f"/api/messages/{message_id}/feedback", json=body, headers=self._auth(token))
        _raise_for(f"feedback on {message_id}", r, 200, 201)
        return r.json()

    async def rank(self, token: str, message_ids: list[int]) -> dict:
        r = await self.http.post("/api/rankings", json={"message_ids": message_ids}, headers=self._auth(token))
        _raise_for("ranking", r, 200, 201)
        return r.json()

    # --- operator --------------------------------------------------------------------------------
    async def start_training_run(self, admin_token: str, user_ids: list[int] | None = None) -> dict:
        body = {} if user_ids is None else {"user_ids": user_ids}
        r = await self.http.post("/api/admin/training-runs", json=body, headers=self._auth(admin_token))
        _raise_for("start a training run", r, 200, 201, 202)
        return r.json()

    async def training_run(self, admin_token: str, run_id: int) -> dict:
        r = await self.http.get(f"/api/admin/training-runs/{run_id}", headers=self._auth(admin_token))
        _raise_for(f"training run {run_id}", r, 200)
        return r.json()

    async def wait_for_run(self, admin_token: str, run_id: int, *, timeout_s: float, poll_s: float = 2.0) -> dict:
        """Poll until the run succeeded or failed; raise after ``timeout_s`` (is a worker running?)."""
        deadline = time.monotonic() + timeout_s
        last = None
        while True:
            run = await self.training_run(admin_token, run_id)
            if run.get("status") in FINISHED_RUN_STATES:
                return run
            if (run.get("status"), run.get("progress")) != last:
                last = (run.get("status"), run.get("progress"))
                logger.info("training run %s: %s (progress %s)", run_id, *last)
            if time.monotonic() > deadline:
                raise ContractError(
                    f"training run {run_id} still {run.get('status')!r} after {timeout_s:.0f} s; "
                    "is a learning worker running (`assistant worker`, or `assistant serve` without --no-worker)?")
            await asyncio.sleep(poll_s)


class _SocketContext:
    """Connect, send the auth frame, wait for ``ready``."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.ws: ClientConnection | None = None

    async def __aenter__(self) -> ChatSocket:
        ws = self.ws = await websockets.connect(self.url, max_size=1 << 22, open_timeout=30)
        await ws.send(json.dumps({"type": "auth", "token": self.token}))
        first = json.loads(await asyncio.wait_for(ws.recv(), timeout=30))
        if first.get("type") != "ready":
            await ws.close()
            raise ContractError("chat socket auth", code=first.get("code"), detail=first.get("detail", str(first)))
        return ChatSocket(ws)

    async def __aexit__(self, *exc) -> None:
        if self.ws is not None:
            await self.ws.close()
