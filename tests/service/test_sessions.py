"""Sessions that end, sign-in throttling and the cross-site check (issue 12, findings 5, 6 and 7).

Before: a token worked for 7 days after logout or a password change; 100 wrong passwords in
41 s met no slowdown and no log line; the admin rollback POST and the form login ran from a
foreign ``Origin`` with the session cookie.
"""

from __future__ import annotations

import logging

from sqlmodel import Session

from service import crud
from tests.service.conftest import signup


def test_logout_ends_every_session_of_the_user(client):
    alice = signup(client, "alice")
    other_device = client.post("/api/auth/token", data={"username": "alice", "password": "correct-horse-1"}).json()["access_token"]
    client.cookies.clear()
    assert client.get("/api/me", headers=alice["headers"]).status_code == 200
    assert client.post("/api/auth/logout", headers=alice["headers"]).status_code == 204
    for token in (alice["token"], other_device):
        assert client.get("/api/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    with client.websocket_connect("/api/chat") as ws:
        ws.send_json({"type": "auth", "token": alice["token"]})
        assert ws.receive_json()["code"] == "unauthorized"
    fresh = client.post("/api/auth/token", data={"username": "alice", "password": "correct-horse-1"}).json()["access_token"]
    client.cookies.clear()
    assert client.get("/api/me", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200


def test_a_new_operator_password_ends_the_old_sessions(app_factory):
    client = app_factory(admin_password="operator-pass-1")
    old = client.post("/api/auth/token", data={"username": "admin", "password": "operator-pass-1"}).json()["access_token"]
    client.cookies.clear()
    with Session(client.app.state.db) as s:
        crud.ensure_admin(s, password="operator-pass-1")  # unchanged: sessions live on
    assert client.get("/api/me", headers={"Authorization": f"Bearer {old}"}).status_code == 200
    with Session(client.app.state.db) as s:
        crud.ensure_admin(s, password="operator-pass-2")
    assert client.get("/api/me", headers={"Authorization": f"Bearer {old}"}).status_code == 401


def test_failed_sign_ins_are_throttled_and_logged(app_factory, caplog):
    client = app_factory(sign_in_failures_per_account=3, sign_in_failures_per_address=100, trusted_proxies="testclient")
    signup(client, "bob")
    caplog.set_level(logging.WARNING, logger="service.routes.auth")
    attacker = {"X-Forwarded-For": "203.0.113.7"}
    for _ in range(3):
        r = client.post("/api/auth/token", data={"username": "bob", "password": "guess-guess"}, headers=attacker)
        assert r.status_code == 401
    r = client.post("/api/auth/token", data={"username": "bob", "password": "correct-horse-1"}, headers=attacker)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1  # even the right one, from there
    assert client.post("/api/auth/token", data={"username": "BOB", "password": "x"},
                       headers={"X-Forwarded-For": "198.51.100.2"}).status_code == 429  # one account, any new address
    logged = [rec.getMessage() for rec in caplog.records if "failed sign-in" in rec.getMessage()]
    assert len(logged) == 3 and "'bob'" in logged[0] and "guess-guess" not in " ".join(logged)
    assert client.post("/api/auth/token", data={"username": "carol", "password": "x"}).status_code == 401  # others unaffected


def test_failed_sign_ins_per_address_are_throttled(app_factory):
    client = app_factory(sign_in_failures_per_account=100, sign_in_failures_per_address=4)
    for i in range(4):
        assert client.post("/api/auth/token", data={"username": f"user{i}", "password": "x"}).status_code == 401
    assert client.post("/api/auth/token", data={"username": "user9", "password": "x"}).status_code == 429


def test_cookie_requests_from_a_foreign_origin_are_refused(app_factory):
    client = app_factory(admin_password="operator-pass-1")
    signup(client, "carol")
    r = client.post("/api/auth/token", data={"username": "admin", "password": "operator-pass-1"})
    assert r.status_code == 200 and "assistant_session" in client.cookies  # the cookie is kept for what follows
    foreign = {"Origin": "http://evil.example"}
    assert client.post("/api/admin/users/2/adapter/rollback", headers=foreign).status_code == 403
    assert client.post("/api/admin/users/2/adapter/rollback", headers={"Referer": "http://evil.example/x"}).status_code == 403
    assert client.post("/api/admin/users/2/adapter/rollback", headers={"Origin": "null"}).status_code == 403
    assert client.post("/api/auth/token", data={"username": "admin", "password": "operator-pass-1"},
                       headers=foreign).status_code == 403
    # a browser always names the origin of an unsafe request: the cookie without one is refused
    assert client.post("/api/admin/users/2/adapter/rollback").status_code == 403
    assert client.delete("/api/me/feedback").status_code == 403
    # signing in again (or registering) from a script's cookie jar does not act on its session
    assert client.post("/api/auth/token", data={"username": "admin", "password": "operator-pass-1"}).status_code == 200
    assert client.post("/api/auth/register", json={"username": "carol", "password": "correct-horse-1"}).status_code == 409
    assert client.post("/api/admin/users/2/adapter/rollback", headers={"Origin": "http://127.0.0.1:8000"}).status_code == 200
    assert client.get("/api/me", headers=foreign).status_code == 200  # reads are not state changes
    token = r.json()["access_token"]
    client.cookies.clear()
    # without the cookie a foreign origin cannot ride on anyone's session: bearer calls are not checked
    assert client.post("/api/admin/users/2/adapter/rollback",
                       headers={**foreign, "Authorization": f"Bearer {token}"}).status_code == 200


def test_a_cross_site_form_cannot_sign_a_visitor_into_another_account(app_factory):
    """Login CSRF (issue 28, M5): SameSite=Lax sends no cookie on a cross-site POST, so the origin is
    checked on signing in and registering whether or not a cookie comes along."""
    client = app_factory()
    signup(client, "mallory")
    foreign = {"Origin": "http://evil.example"}
    r = client.post("/api/auth/token", data={"username": "mallory", "password": "correct-horse-1"}, headers=foreign)
    assert r.status_code == 403 and "assistant_session" not in client.cookies
    assert client.post("/api/auth/register", json={"username": "trap", "password": "correct-horse-1"},
                       headers={"Referer": "http://evil.example/form"}).status_code == 403
    # the product's own page and scripts (no Origin) still sign in
    assert client.post("/api/auth/token", data={"username": "mallory", "password": "correct-horse-1"},
                       headers={"Origin": "http://127.0.0.1:8000"}).status_code == 200
    client.cookies.clear()
    assert client.post("/api/auth/token", data={"username": "mallory", "password": "correct-horse-1"}).status_code == 200


def test_a_burst_of_concurrent_guesses_is_counted_before_any_password_is_checked(app_factory):
    """Issue 28, M6: failures were counted only after argon2 finished, so concurrent guesses all
    passed the check first (about 40 per window instead of 5)."""
    from concurrent.futures import ThreadPoolExecutor

    from service.auth import SignInThrottle

    client = app_factory(sign_in_failures_per_account=5, sign_in_failures_per_address=100, trusted_proxies="testclient")
    signup(client, "victim")
    throttle: SignInThrottle = client.app.state.sign_in
    # five attempts in flight (none has failed yet) fill the account's window: the sixth waits
    assert all(throttle.reserve("victim", f"10.0.0.{i}") is None for i in range(5))
    assert throttle.reserve("victim", "10.0.0.9") is not None
    for i in range(5):  # they turn out right: the reservations are taken back
        throttle.succeeded("victim", f"10.0.0.{i}")
    assert throttle.retry_after("victim", "10.0.0.9") is None

    def guess(i: int) -> int:
        return client.post("/api/auth/token", data={"username": "victim", "password": f"wrong-{i}"},
                           headers={"X-Forwarded-For": "203.0.113.66"}).status_code  # not the owner's address

    with ThreadPoolExecutor(max_workers=12) as pool:
        codes = list(pool.map(guess, range(12)))
    assert codes.count(401) == 5 and codes.count(429) == 7


def test_an_attacker_slows_an_account_down_but_cannot_lock_its_owner_out(app_factory):
    """Issue 28, M6: five wrong passwords from anywhere locked ``admin`` out for everyone."""
    client = app_factory(sign_in_failures_per_account=3, sign_in_failures_per_address=100, trusted_proxies="testclient",
                         admin_password="operator-pass-1")
    owner, attacker = {"X-Forwarded-For": "192.0.2.10"}, {"X-Forwarded-For": "203.0.113.9"}
    assert client.post("/api/auth/token", data={"username": "admin", "password": "operator-pass-1"}, headers=owner).status_code == 200
    for _ in range(3):
        assert client.post("/api/auth/token", data={"username": "admin", "password": "guess"}, headers=attacker).status_code == 401
    assert client.post("/api/auth/token", data={"username": "admin", "password": "guess"}, headers=attacker).status_code == 429
    # the operator's own address still signs in (and its typos do not count against the account)
    assert client.post("/api/auth/token", data={"username": "admin", "password": "typo"}, headers=owner).status_code == 401
    assert client.post("/api/auth/token", data={"username": "admin", "password": "operator-pass-1"}, headers=owner).status_code == 200


def test_limits_key_on_the_forwarded_address_only_behind_a_trusted_proxy(app_factory):
    """Issue 28, M2/M6: behind a reverse proxy every client shared the proxy's address (one
    registration limit for the whole site); a client's own X-Forwarded-For must not pick its key."""
    behind = app_factory(registrations_per_hour=2, registration="open", trusted_proxies="testclient")
    for i in range(2):
        r = behind.post("/api/auth/register", json={"username": f"user-a{i}", "password": "correct-horse-1"},
                        headers={"X-Forwarded-For": "203.0.113.1"})
        assert r.status_code == 201
    assert behind.post("/api/auth/register", json={"username": "user-a9", "password": "correct-horse-1"},
                       headers={"X-Forwarded-For": "203.0.113.1"}).status_code == 429
    # another client behind the same proxy is not limited by the first; a prepended (spoofed) hop is ignored
    assert behind.post("/api/auth/register", json={"username": "user-b0", "password": "correct-horse-1"},
                       headers={"X-Forwarded-For": "198.51.100.4"}).status_code == 201
    assert behind.post("/api/auth/register", json={"username": "user-a8", "password": "correct-horse-1"},
                       headers={"X-Forwarded-For": "1.2.3.4, 203.0.113.1"}).status_code == 429
    direct = app_factory(registrations_per_hour=2, registration="open", trusted_proxies="")  # the peer is no proxy: its header is ignored
    for i in range(2):
        assert direct.post("/api/auth/register", json={"username": f"user-c{i}", "password": "correct-horse-1"},
                           headers={"X-Forwarded-For": f"192.0.2.{i}"}).status_code == 201
    assert direct.post("/api/auth/register", json={"username": "user-c9", "password": "correct-horse-1"},
                       headers={"X-Forwarded-For": "192.0.2.99"}).status_code == 429
