"""Untrusted text executes nothing: model output goes through marked then DOMPurify, user
text is shown as text. Execution is detected by a window flag and by any dialog."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.frontend.helpers import send, sign_up, unique_name, wait_reply_done

pytestmark = pytest.mark.browser

# Each payload would set window.__xss (or open a dialog) if it ran.
CORPUS = [
    "<script>window.__xss = 'script'</script>",
    "<img src=x onerror=\"window.__xss='img-onerror'\">",
    "<svg onload=\"window.__xss='svg-onload'\"><circle r=5></circle></svg>",
    "<svg><script>window.__xss='svg-script'</script></svg>",
    "[click me](javascript:window.__xss='md-link')",
    "[click me](JaVaScRiPt:alert(1))",
    "<a href=\"javascript:window.__xss='a-href'\">link</a>",
    "<a href=\"  javascript:alert(1)\">spaced</a>",
    "<iframe src=\"javascript:alert(1)\"></iframe>",
    "<iframe srcdoc=\"<script>parent.__xss='srcdoc'</script>\"></iframe>",
    "<details open ontoggle=\"window.__xss='ontoggle'\">x</details>",
    "<div style=\"background:url(javascript:alert(1))\" onmouseover=\"window.__xss='hover'\">hover</div>",
    "<math><mtext><table><mglyph><style><img src=x onerror=\"window.__xss='mxss'\">",
    "<form action=\"javascript:alert(1)\"><button>go</button></form>",
    "<object data=\"data:text/html,<script>alert(1)</script>\"></object>",
    "![img](x\" onerror=\"window.__xss='md-img')",
    "<a href=\"data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==\">data link</a>",
    "```html\n<script>window.__xss='fenced'</script>\n```",
    "<body onload=\"window.__xss='body'\">",
    "<input autofocus onfocus=\"window.__xss='autofocus'\">",
]


def _watch(page) -> list[str]:
    dialogs: list[str] = []

    def on_dialog(d):
        dialogs.append(d.message)
        d.dismiss()

    page.on("dialog", on_dialog)
    return dialogs


def test_model_output_corpus_renders_inert(page, server):
    dialogs = _watch(page)
    page.goto(server.url + "/")
    page.locator("#auth-username").wait_for()
    results = page.evaluate(
        """async (corpus) => {
            const m = await import('./render.js');
            const out = [];
            for (const text of corpus) {
                const box = document.createElement('div');
                document.body.append(box);
                m.setMarkdown(box, text);          // exactly what a streamed reply goes through
                for (const n of box.querySelectorAll('*')) {  // poke every element
                    n.dispatchEvent(new MouseEvent('mouseover', { bubbles: true }));
                    if (n.tagName === 'A') n.click();
                }
                const els = [...box.querySelectorAll('*')];
                out.push({
                    html: box.innerHTML,
                    tags: els.map((n) => n.tagName.toLowerCase()),
                    attrs: els.flatMap((n) => [...n.attributes].map((a) => `${a.name}=${a.value}`)),
                });
            }
            await new Promise((r) => setTimeout(r, 300));  // let onload/onerror fire if anything survived
            return out;
        }""",
        CORPUS,
    )
    assert page.evaluate("window.__xss") is None
    assert dialogs == []
    dangerous = {"src", "srcdoc", "srcset", "style", "action", "formaction", "xlink:href", "data"}
    for payload, r in zip(CORPUS, results):
        assert not {"script", "iframe", "object", "embed", "svg", "math", "img", "form", "input", "style", "body"} & set(r["tags"]), (payload, r)
        for attr in r["attrs"]:
            name, _, value = attr.partition("=")
            assert not name.startswith("on") and name not in dangerous, (payload, attr)
            assert not (name == "href" and not re.match(r"^(https?:|mailto:|#)", value.strip(), re.I)), (payload, attr)
        assert "<script" not in r["html"].lower(), (payload, r["html"])
    # Safe links survive with a safe rel; data: links lose their href.
    safe = page.evaluate("async () => (await import('./render.js')).renderMarkdown('[ok](https://example.org/a)')")
    assert 'href="https://example.org/a"' in safe and "noopener" in safe
    assert "href" not in results[CORPUS.index(next(p for p in CORPUS if "data:text/html;base64" in p))]["html"]


def test_user_text_corpus_through_the_real_flow(page, server):
    dialogs = _watch(page)
    sign_up(page, server, unique_name())
    payload = "\n".join(CORPUS[:8])
    send(page, payload)
    wait_reply_done(page, page.get_by_test_id("message-assistant").last)
    # Shown verbatim as text, not parsed.
    expect(page.get_by_test_id("message-user").last).to_have_text(payload)
    page.reload()  # and again when loaded from the server (also re-renders the model's reply)
    wait_reply_done(page, page.get_by_test_id("message-assistant").last)
    expect(page.get_by_test_id("message-user").last).to_have_text(payload)
    page.wait_for_timeout(300)
    assert page.evaluate("window.__xss") is None
    assert dialogs == []
    assert page.locator("#thread script, #thread iframe, #thread svg:not(.icon), #thread img").count() == 0
