"""End-to-end against the real Open WebUI (issue 31): ``make openwebui-e2e``.

Starts the wired stack (``deploy/openwebui/run.py``) on a fresh data dir, then drives Open WebUI's
own HTTP API as its web UI does: two users sign up there (open sign-up, role "user"), see this
product's models, chat (a chat of two turns each, with Open WebUI's chat id), and rate a reply
(thumbs, a reason, a 1-10 score, a comment), the chat snapshot attached as the web UI sends it.
It then waits for each rating to arrive here as that user's label (the rating sync,
``ASSISTANT_OPENWEBUI_SYNC_S``, 5 s here) and checks: each Open WebUI user is their own product
user, each chat is one conversation, each rating sits on the reply it rated with its sign,
reason and comment. It prints the timings and exits non-zero on any failure.

Not covered here: a training run and the next reply from the user's own adapter (minutes of
CPU); `tests/service/test_proxy.py` and `tests/service/test_openwebui_*.py` cover the headers and
records, against this product only.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, http  # noqa: E402

BASE = f"http://127.0.0.1:{os.environ.get('OPENWEBUI_PORT', '8080')}"
LABEL_TIMEOUT_S = 60.0


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        raise SystemExit(1)


def ask(token: str, model: str, chat_id: str | None, history: list[dict], parent: str | None) -> tuple[str, str, str]:
    """One turn as Open WebUI's web UI sends it: the user message and the reply's id chosen by the
    client, the chat created by the first turn (``parent_id`` null) and continued by the next. Returns
    (chat id, the reply's message id, its text)."""
    user_id, reply_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = {"model": model, "messages": history, "stream": False, "max_tokens": 24, "parent_id": parent, "id": reply_id,
            "user_message": {"id": user_id, "role": "user", "content": history[-1]["content"], "parentId": parent}}
    if chat_id:
        body["chat_id"] = chat_id
    status, out = http("POST", f"{BASE}/api/chat/completions", body, token=token)
    check(status == 200 and isinstance(out, dict) and bool(out.get("choices")),
          "a reply through Open WebUI" + ("" if status == 200 else f" ({status}: {out})"))
    if not chat_id:
        status, chats = http("GET", f"{BASE}/api/v1/chats/", token=token)
        check(status == 200 and bool(chats), f"the first turn made a chat in Open WebUI ({status})")
        chat_id = chats[0]["id"]
    return chat_id, reply_id, out["choices"][0]["message"]["content"]


def labels(db: Path, username: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "select f.rating, f.reasons, f.comment, m.content, f.score from feedback f join message m on m.id = f.message_id "
            "join user u on u.id = f.user_id where u.username = ? and f.source = 'openwebui'", (username,)).fetchall()


def conversations(db: Path, username: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from conversation c join user u on u.id = c.user_id where u.username = ?",
                            (username,)).fetchone()[0]


def drive(db: Path) -> None:
    """Two Open WebUI users chat and rate there; their ratings must arrive here as labels."""
    users = []
    for name in ("Ann", "Ben"):
        email = f"{name.lower()}-{uuid.uuid4().hex[:6]}@example.com"
        status, me = http("POST", f"{BASE}/api/v1/auths/signup", {"name": name, "email": email, "password": "pw-" + uuid.uuid4().hex})
        check(status == 200 and me.get("role") == "user", f"{name} signs up in Open WebUI as a user ({status})")
        users.append(me)
    status, listed = http("GET", f"{BASE}/api/models", token=users[0]["token"])
    ids = [m["id"] for m in listed.get("data", [])] if status == 200 else []
    check(bool(ids), f"an ordinary user sees this product's models: {ids}")
    model = next((m for m in ids if not m.endswith((":global", ":base"))), ids[0])
    for me, verdict in zip(users, (-1, 1)):
        q1, q2 = "Name a colour.", "And a fruit?"
        chat_id, a1_id, a1 = ask(me["token"], model, None, [{"role": "user", "content": q1}], None)
        history = [{"role": "user", "content": q1}, {"role": "assistant", "content": a1}, {"role": "user", "content": q2}]
        _, a2_id, a2 = ask(me["token"], model, chat_id, history, a1_id)
        status, chat = http("GET", f"{BASE}/api/v1/chats/{chat_id}", token=me["token"])
        stored = (chat.get("chat") or {}).get("history", {}).get("messages", {}) if status == 200 else {}
        check(stored.get(a2_id, {}).get("content", "").strip() == a2.strip(),
              f"Open WebUI keeps {me['name']}'s chat with both turns ({status}, {len(stored)} messages)")
        rated_at = time.monotonic()
        status, _ = http("POST", f"{BASE}/api/v1/evaluations/feedback", {
            "type": "rating",
            "data": {"rating": verdict, "model_id": model, "reason": "Too verbose" if verdict < 0 else "Accurate information",
                     "comment": f"e2e {me['name']}", "details": {"rating": 3 if verdict < 0 else 9}},
            "meta": {"chat_id": chat_id, "message_id": a2_id, "message_index": 4, "model_id": model},
            "snapshot": {"chat": chat}}, token=me["token"])
        check(status == 200, f"{me['name']} rates the second reply {verdict:+d} in Open WebUI ({status})")
        username = f"owui-{me['id']}"
        got = []
        while time.monotonic() - rated_at < LABEL_TIMEOUT_S and not got:
            time.sleep(1)
            got = labels(db, username) if db.exists() else []
        check(len(got) == 1 and got[0][0] == ("up" if verdict > 0 else "down") and got[0][3].strip() == a2.strip()
              and got[0][2] == f"e2e {me['name']}" and got[0][4] == (3 if verdict < 0 else 9)
              and got[0][1] == ('["too_long"]' if verdict < 0 else '["accurate"]'),
              f"{me['name']}'s rating is a label here on the reply rated, in {time.monotonic() - rated_at:.0f} s: {got}")
        check(conversations(db, username) == 1, f"{me['name']}'s chat of two turns is one conversation here")


def main() -> None:
    data = Path(os.environ.get("ASSISTANT_DATA_DIR") or tempfile.mkdtemp(prefix="owui-e2e-"))
    models = ROOT / "data" / "models"
    if not (data / "models").exists() and models.exists():
        (data / "models").symlink_to(models.resolve())
    env = {**os.environ, "ASSISTANT_DATA_DIR": str(data), "ASSISTANT_OPENWEBUI_SYNC_S": "5",
           "ASSISTANT_SAFETY_TRAIN_AT_START": "0"}
    started = time.monotonic()
    stack = subprocess.Popen([sys.executable, str(Path(__file__).with_name("run.py"))], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in stack.stdout:
            print(line, end="", flush=True)
            if "wired in" in line:
                break
        log = (data / "openwebui-e2e.log").open("w")
        threading.Thread(target=lambda: [log.write(x) for x in stack.stdout], daemon=True).start()  # never block the stack
        check(stack.poll() is None, f"the stack is wired ({time.monotonic() - started:.0f} s)")
        drive(data / "assistant.db")
        print(f"passed in {time.monotonic() - started:.0f} s", flush=True)
    finally:
        stack.terminate()
        stack.wait(timeout=60)


if __name__ == "__main__":
    main()
