"""The operator dashboard, "My personalization", error banners and phone width."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from tests.frontend.conftest import ADMIN_PASSWORD
from tests.frontend.helpers import send, shot, sign_in, sign_up, unique_name, wait_reply_done

pytestmark = pytest.mark.browser


def test_operator_triggers_a_run_and_sees_it(page, server):
    sign_in(page, server, "admin", ADMIN_PASSWORD)
    probe = page.request.get(server.url + "/api/admin/training-runs")
    assert probe.status != 404, "GET /api/admin/training-runs is missing: the operator API is not implemented yet"
    nav = page.get_by_test_id("nav-admin")
    expect(nav).to_be_visible()
    nav.click()
    page.get_by_test_id("admin-trigger-run").click()
    row = page.get_by_test_id("admin-run-row").first
    expect(row).to_be_visible()
    expect(row).to_have_attribute("data-status", "queued")  # no worker in this server: it waits
    expect(row.locator(".badge")).to_have_text("queued")
    # A second trigger while one is queued is refused with a clear message.
    page.get_by_test_id("admin-trigger-run").click()
    expect(page.locator(".trigger-form")).to_contain_text("already queued or running")
    # Charts degrade to "no data" before any adapter exists.
    expect(page.locator("#admin-stats")).to_contain_text("no data")
    shot(page, "admin")
    assert page.js_errors == []


def test_personalization_page_export_and_delete_feedback(page, server):
    sign_up(page, server, unique_name())
    send(page, "Hi there")
    reply = wait_reply_done(page, page.get_by_test_id("message-assistant").last)
    reply.get_by_test_id("rate-up").click()
    reply.get_by_test_id("feedback-submit").click()
    expect(reply.locator(".rating-status")).to_contain_text("Saved")

    page.get_by_role("link", name="My personalization").click()
    expect(page.get_by_role("heading", name="Your adapter history")).to_be_visible()
    with page.expect_download() as dl:
        page.get_by_role("button", name="Export my feedback (JSON)").click()
    exported = json.loads(open(dl.value.path()).read())
    assert "up" in json.dumps(exported)
    shot(page, "personalization")

    page.get_by_role("button", name="Delete my feedback").click()
    page.locator("#confirm-ok").click()
    expect(page.locator("#me-content")).to_contain_text("Your feedback was deleted.")
    assert server.db_rows("SELECT COUNT(*) FROM feedback f JOIN user u ON u.id = f.user_id WHERE u.username = ?",
                          (page.locator("#whoami").inner_text(),)) == [(0,)]
    assert page.js_errors == []


def test_error_banners_for_429_5xx_and_offline(page, server, context):
    sign_up(page, server, unique_name())
    page.route("**/api/conversations", lambda r: r.fulfill(status=429, json={"detail": "slow down"}))
    page.evaluate("import('./chat.js').then((m) => m.loadConversations())")
    expect(page.locator("#banner")).to_contain_text("Too many requests")
    page.unroute("**/api/conversations")

    page.route("**/api/conversations", lambda r: r.fulfill(status=500, json={"detail": "boom"}))
    page.evaluate("import('./chat.js').then((m) => m.loadConversations())")
    expect(page.locator("#banner")).to_contain_text("Server error (500)")
    page.unroute("**/api/conversations")
    page.locator("#banner-close").click()
    expect(page.locator("#banner")).to_be_hidden()

    context.set_offline(True)
    expect(page.locator("#banner")).to_contain_text("offline")
    shot(page, "offline-banner")
    context.set_offline(False)
    expect(page.get_by_test_id("composer-send")).to_be_enabled()
    assert page.js_errors == []


def test_phone_width_layout(browser, server):
    ctx = browser.new_context(viewport={"width": 390, "height": 800}, is_mobile=True, has_touch=True)
    page = ctx.new_page()
    try:
        sign_up(page, server, unique_name())
        send(page, "Hello from a phone")
        wait_reply_done(page, page.get_by_test_id("message-assistant").last)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page scrolls sideways by {overflow}px at phone width"
        expect(page.locator("#sidebar")).to_be_hidden()
        page.get_by_role("button", name="Show conversations").click()
        expect(page.locator("#sidebar")).to_be_visible()
        shot(page, "phone-sidebar")
        page.get_by_role("button", name="Show conversations").click()
        shot(page, "phone-chat")
    finally:
        ctx.close()


def test_operator_dashboard_renders_runs_adapters_and_plots(page, server):
    """The dashboard's rendering, fed fixed API answers (shapes from the API contract)."""
    versions = [
        {"version": 1, "status": "retired", "created_at": "2026-11-20T02:00:00", "metrics": {"gate/candidate/mean_reward": 0.12, "gate/candidate/kl_per_token": 0.010, "gate/candidate/harm_rate": 0.05, "ppo/approx_kl": 0.002}},
        {"version": 2, "status": "promoted", "created_at": "2026-11-21T02:00:00", "metrics": {"gate/candidate/mean_reward": 0.31, "gate/candidate/kl_per_token": 0.022, "gate/candidate/harm_rate": 0.03, "ppo/approx_kl": 0.003}},
        {"version": 3, "status": "rejected", "reason": "harm rate rose", "created_at": "2026-11-22T02:00:00", "metrics": {"gate/candidate/mean_reward": 0.40, "note": "text is skipped"}},
    ]
    answers = {
        ("GET", "/api/admin/users"): [{"id": 1, "username": "admin", "role": "operator"}, {"id": 2, "username": "alice", "role": "user"}],
        ("GET", "/api/admin/training-runs"): [
            {"id": 2, "status": "running", "progress": 0.4, "error": None, "results": [], "created_at": "2026-11-22T02:00:00", "trigger": "manual"},
            {"id": 1, "status": "succeeded", "progress": 1.0, "error": None, "created_at": "2026-11-21T02:00:00", "trigger": "schedule",
             "results": [{"user_id": 2, "adapter_version": "u2-v2", "promoted": True, "reason": "reward +0.19, harm within budget", "metrics": versions[1]["metrics"]},
                         {"user_id": None, "adapter_version": "global-v1", "promoted": False, "reason": "KL over budget", "metrics": {}}]},
        ],
        ("GET", "/api/admin/adapters"): [{"user_id": 2, "active_version": 2, "versions": versions},
                                         {"user_id": None, "active_version": None, "versions": []}],
        ("GET", "/api/admin/stats"): {
            "feedback_per_day": [{"day": "2026-11-20", "up": 3, "down": 1}, {"day": "2026-11-21", "up": 5, "down": 2}],
            "reward_model": [{"run_id": 1, "accuracy": 0.61, "length_baseline": 0.52}, {"run_id": 2, "accuracy": 0.68, "length_baseline": 0.53}],
        },
        ("GET", "/api/admin/schedule"): {"cron": "0 2 * * *", "enabled": True},
        ("GET", "/api/admin/eval/latest"): {"win_rate": {"vs_base": 0.61}, "harm_rate": 0.02},
        ("POST", "/api/admin/users/2/adapter/rollback"): {},
    }
    calls = []

    def answer(route):
        req = route.request
        path = "/" + req.url.split("/", 3)[3].split("?")[0]
        calls.append((req.method, path, req.post_data))
        if req.method == "PUT" and path == "/api/admin/schedule":
            return route.fulfill(json=json.loads(req.post_data))
        body = answers.get((req.method, path))
        return route.fulfill(status=404, json={"detail": "Not Found"}) if body is None else route.fulfill(json=body)

    sign_in(page, server, "admin", ADMIN_PASSWORD)
    page.route("**/api/admin/**", answer)
    page.get_by_test_id("nav-admin").click()

    rows = page.get_by_test_id("admin-run-row")
    expect(rows).to_have_count(2)
    expect(rows.first.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "40")
    rows.nth(1).locator("summary").click()
    expect(rows.nth(1)).to_contain_text("reward +0.19, harm within budget")
    expect(rows.nth(1)).to_contain_text("KL over budget")
    charts = page.locator("#admin-metric-charts figure")
    expect(charts).to_have_count(4)  # reward, KL, harm rate, approx KL; the text metric is skipped
    expect(charts.first.locator("figcaption")).to_have_text("Reward (mean)")
    expect(charts.first.locator("circle")).to_have_count(3)
    expect(page.locator("#admin-stats figure svg")).to_have_count(2)  # both plots have data
    expect(page.locator("#admin-stats")).not_to_contain_text("no data")
    expect(page.get_by_role("heading", name="Latest evaluation report")).to_be_visible()
    shot(page, "admin-dashboard")
    page.locator("#admin-metric-charts").scroll_into_view_if_needed()
    shot(page, "admin-plots")

    page.get_by_role("button", name="Roll back alice to the previous version").click()
    page.locator("#schedule-cron").fill("30 3 * * 1")
    page.get_by_role("button", name="Save schedule").click()
    expect(page.locator(".schedule-form")).to_contain_text("Saved: 30 3 * * 1 (enabled)")
    assert ("POST", "/api/admin/users/2/adapter/rollback", None) in calls
    assert page.js_errors == []


def test_operator_keeps_a_user_out_of_the_shared_models_from_the_dashboard(page, server):
    """Issue 28, M8: the dashboard showed a suspicious user and offered nothing short of suspension."""
    name = unique_name("poolie")
    made = page.request.post(server.url + "/api/auth/register", data={"username": name, "password": "correct-horse-1"})
    assert made.status == 201, made.text()
    uid = made.json()["id"]
    sign_in(page, server, "admin", ADMIN_PASSWORD)
    page.get_by_test_id("nav-admin").click()
    row = page.locator(f"[data-testid=admin-user-row][data-user-id='{uid}']")
    toggle = row.get_by_test_id("admin-shared-pool")
    expect(toggle).to_have_attribute("aria-pressed", "false")
    toggle.click()
    expect(row.get_by_test_id("admin-shared-pool")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#admin-users p[aria-live]")).to_contain_text("stay out of the shared models")
    users = page.request.get(server.url + "/api/admin/users").json()
    assert next(u for u in users if u["id"] == uid)["shared_pool_excluded"] is True
    assert page.js_errors == []
