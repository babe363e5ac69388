"""The chat screen against a real server: sign up, streamed replies, rating, compare mode,
regenerate and paging, conversation management, reconnecting after a dropped socket."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import expect

from tests.frontend.helpers import REPLY_TIMEOUT_MS, api_get, send, shot, sign_up, unique_name, wait_reply_done

pytestmark = pytest.mark.browser


def conversation_id(page) -> int:
    m = re.search(r"#/chat/(\d+)", page.url)
    assert m, f"no conversation in the URL {page.url}"
    return int(m.group(1))


def test_sign_up_chat_stream_and_thumbs_down_with_reason(page, server):
    # Count token frames as they arrive, to show the reply really streamed.
    page.add_init_script("""window.__tokens = 0; { const O = window.WebSocket;
        window.WebSocket = class extends O { constructor(...a) { super(...a);
          this.addEventListener('message', (e) => { if (JSON.parse(e.data).type === 'token') window.__tokens++; }); } }; }""")
    sign_up(page, server, unique_name())
    expect(page.get_by_test_id("nav-admin")).to_be_hidden()  # not an operator
    send(page, "Say hello in one short sentence.")
    reply = page.get_by_test_id("message-assistant").last
    expect(reply).not_to_have_text("", timeout=REPLY_TIMEOUT_MS)
    wait_reply_done(page, reply)
    assert page.evaluate("window.__tokens") >= 2, "the reply did not arrive as several token frames"
    expect(reply.locator(".model-label")).to_have_text("base")
    shot(page, "chat")

    reply.get_by_test_id("rate-down").click()
    reply.get_by_test_id("reason-unhelpful").click()
    reply.get_by_label("Comment (optional)").fill("too vague")
    shot(page, "rating-panel")
    reply.get_by_test_id("feedback-submit").click()
    expect(reply.locator(".rating-status")).to_contain_text("Saved")

    message_id = int(reply.get_attribute("data-message-id"))
    conv = api_get(page, f"/api/conversations/{conversation_id(page)}")
    stored = next(m for m in conv["messages"] if m["id"] == message_id)
    assert stored["feedback"] == {"rating": "down", "reasons": ["unhelpful"], "comment": "too vague", "score": None}
    assert server.db_rows("SELECT rating, reasons FROM feedback WHERE message_id = ?", (message_id,)) == [("down", '["unhelpful"]')]

    # The saved state survives a reload and can be changed.
    page.reload()
    reply = page.locator(f'[data-testid=message-assistant][data-message-id="{message_id}"]')
    expect(reply.get_by_test_id("rate-down")).to_have_attribute("aria-pressed", "true")
    reply.get_by_test_id("rate-up").click()
    reply.get_by_test_id("reason-helpful").click()
    reply.get_by_test_id("feedback-submit").click()
    expect(reply.locator(".rating-status")).to_contain_text("helpful")
    assert server.db_rows("SELECT rating, reasons FROM feedback WHERE message_id = ?", (message_id,)) == [("up", '["helpful"]')]
    assert page.js_errors == []


def test_compare_mode_pick_b_stores_a_ranking(page, server):
    sign_up(page, server, unique_name())
    page.get_by_test_id("compare-toggle").check()
    send(page, "Name a colour.")
    expect(page.get_by_test_id("message-assistant")).to_have_count(2, timeout=REPLY_TIMEOUT_MS)
    expect(page.get_by_test_id("pick-b")).to_be_enabled(timeout=REPLY_TIMEOUT_MS)
    a_id = int(page.locator(".compare-col").nth(0).get_by_test_id("message-assistant").get_attribute("data-message-id"))
    b_id = int(page.locator(".compare-col").nth(1).get_by_test_id("message-assistant").get_attribute("data-message-id"))
    expect(page.locator(".compare .model-label")).to_have_count(0)  # blind until picked
    shot(page, "compare")

    page.get_by_test_id("pick-b").click()
    expect(page.get_by_test_id("pick-b")).to_have_attribute("aria-pressed", "true")
    expect(page.locator(".compare .model-label")).to_have_count(2)
    rows = server.db_rows("SELECT message_ids FROM ranking")
    assert [b_id, a_id] in [json.loads(r[0]) for r in rows]

    # "Both bad" is stored as two thumbs down.
    page.get_by_test_id("pick-both-bad").click()
    expect(page.get_by_test_id("pick-both-bad")).to_have_attribute("aria-pressed", "true")
    got = dict(server.db_rows(f"SELECT message_id, rating FROM feedback WHERE message_id IN ({a_id}, {b_id})"))
    assert got == {a_id: "down", b_id: "down"}
    assert page.js_errors == []


def test_regenerate_adds_a_sibling_and_pages_between_them(page, server):
    sign_up(page, server, unique_name())
    send(page, "Give me a number.")
    first = wait_reply_done(page, page.get_by_test_id("message-assistant").last)
    first_id = first.get_attribute("data-message-id")
    first.get_by_role("button", name="Regenerate").click()
    reply = page.get_by_test_id("message-assistant")
    expect(reply).to_have_count(1)
    expect(reply.locator(".pager")).to_contain_text("2/2", timeout=REPLY_TIMEOUT_MS)
    wait_reply_done(page, reply)
    assert reply.get_attribute("data-message-id") != first_id
    reply.get_by_role("button", name="Previous alternative").click()
    expect(reply.locator(".pager")).to_contain_text("1/2")
    expect(page.get_by_test_id("message-assistant")).to_have_attribute("data-message-id", first_id)

    # The next turn continues from the shown alternative.
    send(page, "And another?")
    wait_reply_done(page, page.get_by_test_id("message-assistant").nth(1))
    conv = api_get(page, f"/api/conversations/{conversation_id(page)}")
    second_user = [m for m in conv["messages"] if m["role"] == "user"][1]
    assert second_user["parent_id"] == int(first_id)
    assert page.js_errors == []


def test_conversations_new_rename_delete(page, server):
    sign_up(page, server, unique_name())
    send(page, "Hi")
    wait_reply_done(page, page.get_by_test_id("message-assistant").last)
    cid = conversation_id(page)
    item = page.locator(f'.conv-item[data-conversation-id="{cid}"]')
    expect(item).to_be_visible()

    item.get_by_role("button", name=re.compile("^Rename")).click()
    box = page.get_by_label("New conversation title")
    box.fill("Renamed <b>chat</b>")
    box.press("Enter")
    expect(item.locator(".conv-open")).to_have_text("Renamed <b>chat</b>")  # shown as text
    assert api_get(page, f"/api/conversations/{cid}")["title"] == "Renamed <b>chat</b>"

    page.get_by_role("button", name="+ New chat").click()
    expect(page.get_by_test_id("message-assistant")).to_have_count(0)
    item.locator(".conv-open").click()
    expect(page.get_by_test_id("message-assistant")).to_have_count(1)

    item.get_by_role("button", name=re.compile("^Delete")).click()
    page.locator("#confirm-ok").click()
    expect(item).to_have_count(0)
    assert all(c["id"] != cid for c in api_get(page, "/api/conversations"))
    assert page.js_errors == []


def test_dropped_socket_reloads_the_stored_reply_without_duplicates(page, server):
    """Drop the WebSocket mid-reply; after reconnecting the thread shows the stored reply once."""
    state = {"connections": 0, "tokens": 0}

    def route(ws):
        state["connections"] += 1
        upstream = ws.connect_to_server()
        first = state["connections"] == 1

        def from_server(message):
            ws.send(message)
            if first and '"token"' in str(message):
                state["tokens"] += 1
                if state["tokens"] == 2:
                    upstream.close()
                    ws.close()

        upstream.on_message(from_server)
        ws.on_message(lambda message: upstream.send(message))

    sign_up(page, server, unique_name())
    page.route_web_socket(re.compile(r".*/api/chat$"), route)
    page.reload()
    page.get_by_test_id("composer-input").wait_for()
    expect(page.get_by_test_id("composer-send")).to_be_enabled()
    send(page, "Count from one to twenty.")
    expect(page.locator("#banner")).to_contain_text("Reconnecting", timeout=REPLY_TIMEOUT_MS)
    reply = page.get_by_test_id("message-assistant")
    wait_reply_done(page, reply.last)
    expect(page.locator("#banner")).to_be_hidden()
    assert state["connections"] >= 2

    stored = [m for m in api_get(page, f"/api/conversations/{conversation_id(page)}")["messages"] if m["role"] == "assistant"]
    assert len(stored) == 1
    expect(reply).to_have_count(1)
    expect(reply).to_have_attribute("data-message-id", str(stored[0]["id"]))
    expected = page.evaluate("""async (text) => { const m = await import('./render.js');
        const d = document.createElement('div'); m.setMarkdown(d, text); return d.textContent; }""", stored[0]["content"])
    assert reply.locator(".msg-body").text_content() == expected
    assert page.js_errors == []


def test_stop_cancels_a_long_reply(page, server):
    """Stop sends a cancel frame; the reply ends as "stopped" and keeps what was written."""

    def route(ws):
        upstream = ws.connect_to_server()

        def to_server(message):
            frame = json.loads(message)
            if frame.get("type") == "chat":
                frame["max_new_tokens"] = 1000  # long enough to be stopped mid-way
            upstream.send(json.dumps(frame))

        ws.on_message(to_server)
        upstream.on_message(lambda message: ws.send(message))

    page.route_web_socket(re.compile(r".*/api/chat$"), route)
    sign_up(page, server, unique_name())
    send(page, "Write a very long story about a lighthouse keeper.")
    reply = page.get_by_test_id("message-assistant").last
    expect(reply).not_to_have_text("", timeout=REPLY_TIMEOUT_MS)
    page.get_by_test_id("composer-stop").click()
    expect(reply).to_have_attribute("data-finish-reason", "cancelled", timeout=REPLY_TIMEOUT_MS)
    expect(reply.locator(".finish-note")).to_have_text("stopped")
    expect(page.get_by_test_id("composer-send")).to_be_visible()
    stored = next(m for m in api_get(page, f"/api/conversations/{conversation_id(page)}")["messages"] if m["role"] == "assistant")
    assert stored["finish_reason"] == "cancelled" and stored["content"]
    assert page.js_errors == []
