"""Fuzz every JSON route and the chat WebSocket with the hostile inputs the audit found (issue 12,
findings 12-14): NaN and Infinity, lone surrogates, NUL, nesting deeper than the parser's stack,
ids past 64 bits, huge strings. Hypothesis generates new ones each example from those families and
puts them in every top-level field of every operation's JSON body, in its path ids, and as a whole
body or frame. A failure is a 5xx, a response that echoes the hostile value, or a socket that closes.
"""

from __future__ import annotations

import json
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.service.conftest import signup

MARKER = "zq9hostile"  # in every hostile string: a response must never repeat it
MAX_EXAMPLES = 12
ADMIN_PASSWORD = "operator-pass-for-fuzz-1"
# Operations that end the fuzzing session or erase what it fuzzes: never sent (each has its own tests)
DESTRUCTIVE = {("DELETE", "/api/me"), ("POST", "/api/auth/logout"), ("POST", "/api/auth/logout-all"),
               ("DELETE", "/api/me/feedback"), ("POST", "/api/me/password")}


def _raw(value) -> str:
    """JSON text as an attacker would send it: NaN/Infinity literals and lone surrogates escaped."""
    return json.dumps(value, allow_nan=True)


deep = st.integers(min_value=1500, max_value=6000).map(lambda n: "[" * n + "]" * n)
surrogate_text = st.builds(lambda a, c: f"{a}{MARKER}{chr(c)}", st.text(max_size=5),
                           st.integers(min_value=0xD800, max_value=0xDFFF))
nul_text = st.builds(lambda a: f"{MARKER}\x00{a}", st.text(max_size=5))
huge_text = st.integers(min_value=70_000, max_value=200_000).map(lambda n: MARKER + "x" * n)
odd_number = st.sampled_from([float("nan"), float("inf"), float("-inf")]) | st.integers(min_value=2**63, max_value=2**80)
# a JSON value (as raw text) from one of the hostile families
hostile_value = (odd_number.map(_raw) | surrogate_text.map(_raw) | nul_text.map(_raw) | huge_text.map(_raw) | deep
                 | st.lists(odd_number, min_size=1, max_size=3).map(_raw))
hostile_id = st.sampled_from(["0", "-1", "2147483648", str(2**63), str(2**80), "1e309", "NaN", "%00", "1.5"])


def _operations(client) -> list[tuple[str, str, list[str], list[str]]]:
    """(method, path template, path parameters, top-level JSON body fields) of every operation."""
    spec = client.get("/openapi.json").json()
    schemas = spec.get("components", {}).get("schemas", {})
    ops = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in ("post", "put", "patch", "delete", "get"):
                continue
            params = [p["name"] for p in op.get("parameters", []) if p.get("in") == "path"]
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            ref = body.get("$ref", "").rsplit("/", 1)[-1]
            fields = list(schemas.get(ref, body).get("properties", {}))
            if (params or fields or body) and (method.upper(), path) not in DESTRUCTIVE:
                ops.append((method.upper(), path, params, fields))
    return ops


def _operator_headers(client) -> dict:
    r = client.post("/api/auth/token", data={"username": "admin", "password": ADMIN_PASSWORD})
    assert r.status_code == 200, r.text
    client.cookies.clear()
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def test_hostile_inputs_get_a_clear_4xx_everywhere_and_are_never_echoed(app_factory):
    client = app_factory(max_new_tokens_limit=4, default_max_new_tokens=2, admin_password=ADMIN_PASSWORD)
    user = signup(client, "fuzzer")
    client.cookies.clear()
    ops = _operations(client)
    assert len(ops) >= 10  # the schema lists the routes (dev mode)
    failures: list[str] = []
    as_user = {**user["headers"], "Content-Type": "application/json"}
    as_operator = {**_operator_headers(client), "Content-Type": "application/json"}

    def check(method: str, path: str, body: str | None) -> None:
        # the admin routes as the operator (a user gets 403 before the body is read), the rest as the user
        headers = as_operator if path.startswith("/api/admin") else as_user
        r = client.request(method, path, content=body, headers=headers)
        if r.status_code >= 500:
            failures.append(f"{method} {path}: {r.status_code} for {body[:80] if body else None!r}")
        elif MARKER in r.text:
            failures.append(f"{method} {path}: the response echoes the hostile input")
        elif r.status_code in (401, 403):
            failures.append(f"{method} {path}: {r.status_code}: the fuzzing session was lost or refused")

    @given(value=hostile_value, ident=hostile_id, pick=st.integers(min_value=0, max_value=10**6))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def fuzz(value: str, ident: str, pick: int) -> None:
        for method, template, params, fields in ops:
            path = re.sub(r"\{[^}]+\}", ident if params else "1", template)
            if method == "GET":
                check(method, path, None)
                continue
            check(method, path, value)  # a whole body
            if fields:  # one field hostile, the rest absent
                field = fields[pick % len(fields)]
                check(method, re.sub(r"\{[^}]+\}", "1", template), '{"%s": %s}' % (field, value))

    fuzz()
    assert not failures, "\n".join(failures[:20])
    # both sessions survived the fuzz: nothing above was skipped by a sign-out
    assert client.get("/api/me", headers=as_user).status_code == 200
    assert client.get("/api/admin/users", headers=as_operator).status_code == 200


def test_hostile_websocket_frames_answer_bad_frame_and_keep_the_socket_open(app_factory):
    client = app_factory(max_new_tokens_limit=4, default_max_new_tokens=2)
    user = signup(client, "wsfuzzer")
    client.cookies.clear()
    frames = st.one_of(
        hostile_value,
        hostile_value.map(lambda v: '{"type": "chat", "content": %s}' % v),
        hostile_value.map(lambda v: '{"type": "cancel", "message_id": %s}' % v),
        hostile_value.map(lambda v: '{"type": "regenerate", "message_id": 1, "temperature": %s}' % v),
    )
    with client.websocket_connect("/api/chat") as ws:
        ws.send_text(json.dumps({"type": "auth", "token": user["token"]}))
        assert ws.receive_json()["type"] == "ready"

        @given(frame=frames)
        @settings(max_examples=3 * MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(frame: str) -> None:
            ws.send_text(frame)
            reply = ws.receive_json()
            assert reply["type"] == "error" and reply["code"] in ("bad_frame", "too_large", "not_found"), reply
            assert MARKER not in json.dumps(reply)
            ws.send_text('{"type": "ping"}')  # still open, still answering
            assert ws.receive_json() == {"type": "pong"}

        fuzz()
