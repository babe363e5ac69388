"""End-to-end against the real Open WebUI (issue 31): ``make openwebui-e2e``.

Starts the wired stack (``deploy/openwebui/run.py``) on a fresh data dir, then drives Open WebUI's
own HTTP API as its web UI does: two users sign up there (open sign-up, role "user"), see this
product's models, chat (a chat of two turns each, with Open WebUI's chat id), and rate a reply
(thumbs, a reason, a 1-10 score, a comment), the chat snapshot attached as the web UI sends it.
It then waits for each rating to arrive here as that user's label (the rating sync,
``ASSISTANT_OPENWEBUI_SYNC_S``, 5 s here) and checks: each Open WebUI user is their own product
user, each chat is one conversation, each rating sits on the reply it rated with its sign,
reason and comment. Each user rates two more replies; then one training run of the two users
(``assistant train --now``, the smoke protocol's tiny budgets, so it takes a minute or two), and
each user's next reply through Open WebUI must come from the policy the product now serves them,
recorded on the message: their own new adapter version where the gate promoted it (printed, with
the gate's reason where it did not). It prints the timings and exits non-zero on any failure.

`tests/service/test_proxy.py` and `tests/service/test_openwebui_*.py` cover the headers and
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from learning.sim.protocol import TINY_BUDGETS  # noqa: E402

BASE = f"http://127.0.0.1:{os.environ.get('OPENWEBUI_PORT', '8080')}"
LABEL_TIMEOUT_S = 60.0
# Where the browser screenshot of a user's chat after training goes (Open WebUI's own page, in Debian's Chromium).
SCREENSHOT = os.environ.get("OPENWEBUI_E2E_SCREENSHOT")
CHROMIUM = os.environ.get("ASSISTANT_TEST_CHROMIUM", "/usr/bin/chromium")


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


def rate(token: str, model: str, chat_id: str, message_id: str, index: int, verdict: int, name: str) -> None:
    """A thumbs up or down in Open WebUI, with a reason, a 1-10 score and a comment, the chat attached."""
    status, chat = http("GET", f"{BASE}/api/v1/chats/{chat_id}", token=token)
    check(status == 200, f"{name}'s chat reads back from Open WebUI ({status})")
    status, _ = http("POST", f"{BASE}/api/v1/evaluations/feedback", {
        "type": "rating",
        "data": {"rating": verdict, "model_id": model, "reason": "Too verbose" if verdict < 0 else "Accurate information",
                 "comment": f"e2e {name}", "details": {"rating": 3 if verdict < 0 else 9}},
        "meta": {"chat_id": chat_id, "message_id": message_id, "message_index": index, "model_id": model},
        "snapshot": {"chat": chat}}, token=token)
    check(status == 200, f"{name} rates a reply {verdict:+d} in Open WebUI ({status})")


def wait_for_labels(db: Path, username: str, count: int, since: float) -> list[tuple]:
    got: list[tuple] = []
    while time.monotonic() - since < LABEL_TIMEOUT_S and len(got) < count:
        time.sleep(1)
        got = labels(db, username) if db.exists() else []
    return got


def last_reply(db: Path, username: str) -> tuple:
    """(adapter version id, adapter label, policy) of the user's newest stored reply."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "select m.adapter_version_id, m.adapter_label, m.policy from message m join conversation c on c.id = m.conversation_id "
            "join user u on u.id = c.user_id where u.username = ? and m.role = 'assistant' order by m.id desc limit 1",
            (username,)).fetchone()


def training_result(db: Path, username: str) -> tuple:
    """(promoted, the new adapter version's id, the gate's reason) of the user's newest training result."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "select t.promoted, t.adapter_version_id, t.reason from trainingresult t join user u on u.id = t.user_id "
            "where u.username = ? order by t.id desc limit 1", (username,)).fetchone()


def train_and_reply(db: Path, env: dict[str, str], users: list[dict], model: str) -> None:
    """One training run of the Open WebUI users; each one's next reply through Open WebUI comes from what serves them now."""
    names = [f"owui-{me['id']}" for me in users]
    started = time.monotonic()
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "assistant"), "train", "--now", "--users", ",".join(names)],
                          env=env, capture_output=True, text=True)
    check(done.returncode == 0, f"one training run of the two Open WebUI users ({time.monotonic() - started:.0f} s)"
          + ("" if done.returncode == 0 else f": {done.stderr[-2000:]}"))
    for me, username in zip(users, names):
        promoted, version_id, reason = training_result(db, username)
        print(f"     {me['name']}: {'promoted' if promoted else 'refused'} ({reason})", flush=True)
        chat_id, _, _ = ask(me["token"], model, None, [{"role": "user", "content": "Suggest a name for a cat."}], None)
        served = last_reply(db, username)
        if SCREENSHOT and me is users[0]:
            screenshot(me["token"], chat_id, Path(SCREENSHOT))
        if promoted:
            check(served[0] == version_id and served[2] == "user",
                  f"{me['name']}'s next reply through Open WebUI comes from their own adapter version {served[1]}")
        else:  # the gate kept the candidate out: the reply says what served it instead
            check(served[2] in ("global", "base"),
                  f"{me['name']}'s candidate was refused; the next reply says it came from {served[2]} ({served[1]})")


def screenshot(token: str, chat_id: str, out: Path) -> None:
    """The user's chat as Open WebUI's web UI shows it, signed in with their token (a real browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"], headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(BASE + "/auth")
            page.evaluate("t => localStorage.setItem('token', t)", token)
            page.goto(f"{BASE}/c/{chat_id}")
            try:
                page.wait_for_selector("text=Suggest a name for a cat.", timeout=60_000)
                shown = "the chat"
            except Exception:  # the picture still says what the browser got instead (kept beside the log)
                shown = f"no chat text (the page: {page.url})"
            page.wait_for_timeout(2_000)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
        finally:
            browser.close()
    print(f"     the browser showed {shown}: {out}", flush=True)
    check(out.is_file(), f"a browser screenshot of Open WebUI's page: {out}")


def drive(db: Path, env: dict[str, str]) -> None:
    """Two Open WebUI users chat and rate there; their ratings must arrive here as labels; then they train."""
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
        rate(me["token"], model, chat_id, a2_id, 4, verdict, me["name"])
        username = f"owui-{me['id']}"
        got = wait_for_labels(db, username, 1, rated_at)
        check(len(got) == 1 and got[0][0] == ("up" if verdict > 0 else "down") and got[0][3].strip() == a2.strip()
              and got[0][2] == f"e2e {me['name']}" and got[0][4] == (3 if verdict < 0 else 9)
              and got[0][1] == ('["too_long"]' if verdict < 0 else '["accurate"]'),
              f"{me['name']}'s rating is a label here on the reply rated, in {time.monotonic() - rated_at:.0f} s: {got}")
        check(conversations(db, username) == 1, f"{me['name']}'s chat of two turns is one conversation here")
        # five more ratings (the first reply, and one reply in each of four more chats): about a fifth of a user's
        # prompts are held out for the gate, so six leave the tiny budgets' 3 labels to learn from
        rated_at = time.monotonic()
        rate(me["token"], model, chat_id, a1_id, 2, -verdict, me["name"])
        for i, question in enumerate(("Name a river.", "Name a mountain.", "Name a bird.", "Name a tree.")):
            chat, reply_id, _ = ask(me["token"], model, None, [{"role": "user", "content": question}], None)
            rate(me["token"], model, chat, reply_id, 2, verdict if i % 2 == 0 else -verdict, me["name"])
        got = wait_for_labels(db, username, 6, rated_at)
        check(len(got) == 6, f"{me['name']}'s six ratings are labels here ({len(got)})")
    train_and_reply(db, env, users, model)


def main() -> None:
    data = Path(os.environ.get("ASSISTANT_DATA_DIR") or tempfile.mkdtemp(prefix="owui-e2e-"))
    models = ROOT / "data" / "models"
    if not (data / "models").exists() and models.exists():
        (data / "models").symlink_to(models.resolve())
    env = {**os.environ, "ASSISTANT_DATA_DIR": str(data), "ASSISTANT_OPENWEBUI_SYNC_S": "5",
           "ASSISTANT_SAFETY_TRAIN_AT_START": "0", "ASSISTANT_JOB_TIME_BUDGET_S": "0", "ASSISTANT_PPO_STEPS": "1",
           "ASSISTANT_DEV_MODE": os.environ.get("ASSISTANT_DEV_MODE", "1"),  # as run.py serves it
           **TINY_BUDGETS}  # the server's worker and the training run below both train at the smoke size
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
        drive(data / "assistant.db", env)
        print(f"passed in {time.monotonic() - started:.0f} s", flush=True)
    finally:
        stack.terminate()
        stack.wait(timeout=60)


if __name__ == "__main__":
    main()
