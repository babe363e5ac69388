"""Trusted-proxy mode (issue 13): Open WebUI in front with one connection key; the user headers it
forwards make each of its users their own product user, with their own data and their own adapter.
The requests below carry the headers Open WebUI sends with ENABLE_FORWARD_USER_INFO_HEADERS=true
(no Open WebUI process runs here)."""

from __future__ import annotations

import openai
import torch

from learning.worker import Worker
from tests.learning.conftest import tiny_budgets
from tests.service.conftest import signup

PROXY_KEY = "proxy-key-for-open-webui-0123456789abcdef"
MODEL = "smollm2-135m-instruct"


def _as(external_id: str, name: str) -> dict:
    return {"Authorization": f"Bearer {PROXY_KEY}", "X-OpenWebUI-User-Id": external_id, "X-OpenWebUI-User-Name": name,
            "X-OpenWebUI-User-Email": f"{name.lower()}@example.org", "X-OpenWebUI-User-Role": "user"}


def test_forwarded_users_are_separate_users_with_their_own_adapters(app_factory):
    torch.manual_seed(0)
    client = app_factory(proxy_key=PROXY_KEY, admin_password="operator-pass-1", exploration_share=0.0)
    ann, ben = _as("3f9c2a1e-ann", "Ann"), _as("77b1d0c4-ben", "Ben")

    # without the user header the key alone is refused; a wrong key is refused
    assert client.get("/api/me", headers={"Authorization": f"Bearer {PROXY_KEY}"}).status_code == 401
    r = client.post("/v1/chat/completions", headers={"Authorization": f"Bearer {PROXY_KEY}"},
                    json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert r.status_code == 401 and "X-OpenWebUI-User-Id" in r.json()["error"]["message"]
    assert client.get("/api/me", headers={**ann, "Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/api/me", headers={**ann, "X-OpenWebUI-User-Id": "bad id!"}).status_code == 401

    me_ann, me_ben = client.get("/api/me", headers=ann).json(), client.get("/api/me", headers=ben).json()
    assert me_ann["username"] == "owui-3f9c2a1e-ann" and me_ben["username"] == "owui-77b1d0c4-ben" and me_ann["id"] != me_ben["id"]
    assert client.get("/api/me", headers=ann).json()["id"] == me_ann["id"]  # the same user next time
    # nobody can register into the proxy's namespace
    assert client.post("/api/auth/register", json={"username": "owui-x", "password": "tall-tree-shade-7"}).status_code == 422

    # each one chats and ranks through the one connection, with opposite tastes
    http = client
    for headers, prefer_short in ((ann, True), (ben, False)):
        oai = openai.OpenAI(api_key=PROXY_KEY, base_url="http://127.0.0.1:8000/v1", http_client=http, max_retries=0,
                            default_headers={k: v for k, v in headers.items() if k != "Authorization"})
        for q in ("How do I boil an egg?", "Give me a tip for sleeping well.", "What is a good breakfast?", "How do I relax?"):
            raw = oai.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": q}],
                                                                max_tokens=10, temperature=1.0, n=2).http_response.json()
            (a, ta), (b, tb) = ((c["message_id"], c["message"]["content"]) for c in raw["choices"])
            short, long_ = (a, b) if len(ta) <= len(tb) else (b, a)
            best, worst = (short, long_) if prefer_short else (long_, short)
            assert client.post("/api/rankings", json={"message_ids": [best, worst]}, headers=headers).status_code == 201
            client.post(f"/api/messages/{best}/feedback", json={"rating": "up"}, headers=headers)
            client.post(f"/api/messages/{worst}/feedback", json={"rating": "down"}, headers=headers)
        # Open WebUI's background call for a title: answered, not kept
        task = oai.chat.completions.create(model=MODEL, max_tokens=6, messages=[
            {"role": "user", "content": "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history."}])
        assert task.choices[0].message.content is not None
    for headers in (ann, ben):
        convs = client.get("/api/conversations", headers=headers).json()
        assert len(convs) == 4 and not any("Task" in c["title"] for c in convs)
    assert not client.get("/api/conversations", params={"q": "### Task"}, headers=ann).json()
    ann_conv = client.get("/api/conversations", headers=ann).json()[0]["id"]
    assert client.get(f"/api/conversations/{ann_conv}", headers=ben).status_code == 404  # their data stays theirs

    # one run trains an adapter for each of them
    tok = client.post("/api/auth/token", data={"username": "admin", "password": "operator-pass-1"}).json()["access_token"]
    client.cookies.clear()
    admin = {"Authorization": f"Bearer {tok}"}
    r = client.post("/api/admin/training-runs", json={"user_ids": [me_ann["id"], me_ben["id"]]}, headers=admin)
    assert r.status_code == 202, r.text
    assert Worker(client.app.state.settings, budgets=tiny_budgets()).run_pending_once() == r.json()["id"]
    run = client.get(f"/api/admin/training-runs/{r.json()['id']}", headers=admin).json()
    trained = {res["user_id"]: res["adapter_version"] for res in run["results"]}
    assert trained.get(me_ann["id"]) == 1 and trained.get(me_ben["id"]) == 1, run["results"]
    for headers in (ann, ben):
        versions = client.get("/api/me/adapter", headers=headers).json()["versions"]
        assert len(versions) == 1 and versions[0]["label"].startswith(f"u{client.get('/api/me', headers=headers).json()['id']}-")


def test_proxy_mode_is_off_without_a_key(client):
    signup(client, "plain")
    assert client.get("/api/me", headers=_as("someone", "Someone")).status_code == 401


def test_only_the_trusted_proxy_gets_unstored_task_calls(app_factory):
    """Issue 28, L4: before, any user's "### Task:" prompt was answered and then deleted, out of the
    operator's view and the storage quota."""
    from tests.service.conftest import signup

    client = app_factory(proxy_key=PROXY_KEY)
    alice = signup(client, "alice")
    body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "### Task:\nWrite anything."}]}
    assert client.post("/v1/chat/completions", json=body, headers=alice["headers"]).status_code == 200
    assert len(client.get("/api/conversations", headers=alice["headers"]).json()) == 1  # kept, like any turn
    proxied = _as("carol", "Carol")
    assert client.post("/v1/chat/completions", json=body, headers=proxied).status_code == 200
    assert client.get("/api/conversations", headers=proxied).json() == []  # the front end's background call


def test_the_proxy_key_works_only_from_the_front_ends_addresses_when_they_are_listed(app_factory):
    """Issue 28, L1: the proxy key signed in as any user from any address; a leaked key is now not
    enough where the operator lists the front end's addresses."""
    listed = app_factory(proxy_key=PROXY_KEY, proxy_addresses="10.1.2.3, testclient")
    assert listed.get("/api/me", headers=_as("ann", "Ann")).status_code == 200
    elsewhere = app_factory(proxy_key=PROXY_KEY, proxy_addresses="10.1.2.3")
    r = elsewhere.post("/v1/chat/completions", headers=_as("ann", "Ann"),
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert r.status_code == 401
    assert elsewhere.get("/api/me", headers=_as("ann", "Ann")).status_code == 401


def test_the_proxy_creates_at_most_its_hourly_share_of_new_users(app_factory):
    """Issue 28, M2: proxy-created users are approved on creation, without any limit."""
    client = app_factory(proxy_key=PROXY_KEY, proxy_users_per_hour=2)
    assert client.get("/api/me", headers=_as("u1", "One")).status_code == 200
    assert client.get("/api/me", headers=_as("u2", "Two")).status_code == 200
    r = client.get("/api/me", headers=_as("u3", "Three"))
    assert r.status_code == 401 and "ASSISTANT_PROXY_USERS_PER_HOUR" in r.json()["detail"]
    assert client.get("/api/me", headers=_as("u1", "One")).status_code == 200  # known users are not limited


def test_background_calls_have_slots_of_their_own(app_factory):
    """Issue 31: Open WebUI's title, tag and follow-up calls took the user's generation slots, so
    chats started back to back got "at most 4 generations at once" in place of replies."""
    client = app_factory(proxy_key=PROXY_KEY, max_concurrent_per_user=1, max_background_per_user=1)
    ann = _as("ann-slots", "Ann")
    uid = client.get("/api/me", headers=ann).json()["id"]
    chat = client.app.state.chat
    chat.reserve(uid, 1)  # a reply of Ann's is generating
    task = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "### Task:\nSuggest a title."}]}
    assert client.post("/v1/chat/completions", json=task, headers=ann).status_code == 200
    turn = {"model": MODEL, "max_tokens": 2, "messages": [{"role": "user", "content": "Hello?"}]}
    busy = client.post("/v1/chat/completions", json=turn, headers=ann)
    assert busy.status_code == 429 and "at most 1 generations" in busy.json()["error"]["message"]
    chat.release(uid, 1)
    chat.reserve(uid, 1, background=True)  # a background call is running: replies still start
    assert client.post("/v1/chat/completions", json=turn, headers=ann).status_code == 200
    over = client.post("/v1/chat/completions", json=task, headers=ann)
    assert over.status_code == 429 and "background calls" in over.json()["error"]["message"]


def test_listing_models_through_the_proxy_creates_no_user(app_factory):
    """Issue 31: Open WebUI lists models for each of its users (and at start, with no user headers);
    every listing made a product account, approved, before anyone had chatted."""
    client = app_factory(proxy_key=PROXY_KEY, admin_password="operator-pass-1")
    assert client.get("/v1/models", headers=_as("lurker", "Lurker")).status_code == 200
    bare = client.get("/v1/models", headers={"Authorization": f"Bearer {PROXY_KEY}"})
    assert bare.status_code == 200 and {m["id"] for m in bare.json()["data"]} >= {MODEL, f"{MODEL}:global", f"{MODEL}:base"}
    assert client.get("/v1/models", headers={"Authorization": "Bearer not-the-key"}).status_code == 401
    op = client.post("/api/auth/token", data={"username": "admin", "password": "operator-pass-1"}).json()["access_token"]
    names = {u["username"] for u in client.get("/api/admin/users", headers={"Authorization": f"Bearer {op}"}).json()}
    assert "owui-lurker" not in names
    assert client.get("/api/me", headers=_as("lurker", "Lurker")).status_code == 200  # the first real call makes them


def test_with_a_jwt_secret_only_open_webuis_signed_identity_names_the_user(app_factory):
    """Issue 31: Open WebUI's FORWARD_USER_INFO_HEADER_JWT_SECRET makes it send X-OpenWebUI-User-Jwt (HS256,
    issuer open-webui, as its utils/headers.py mints it). With the same secret here, the proxy key alone, or
    with plain headers naming someone, acts as nobody; a forged, foreign or expired token is refused."""
    import time

    import jwt

    secret = "shared-with-open-webui-0123456789abcdef"
    client = app_factory(proxy_key=PROXY_KEY, proxy_jwt_secret=secret)

    def signed(sub: str, key: str = secret, iss: str = "open-webui", ttl: int = 300) -> dict:
        now = int(time.time())
        token = jwt.encode({"sub": sub, "email": f"{sub}@example.org", "name": sub, "role": "user", "iss": iss,
                            "iat": now, "exp": now + ttl}, key, algorithm="HS256")
        return {"Authorization": f"Bearer {PROXY_KEY}", "X-OpenWebUI-User-Jwt": token}

    me = client.get("/api/me", headers=signed("ann-1"))
    assert me.status_code == 200 and me.json()["username"] == "owui-ann-1"
    # the plain header is ignored: it cannot pick the user, with or without a token
    assert client.get("/api/me", headers=_as("ben-2", "Ben")).status_code == 401
    both = {**signed("ann-1"), "X-OpenWebUI-User-Id": "ben-2"}
    assert client.get("/api/me", headers=both).json()["username"] == "owui-ann-1"
    for bad in (signed("ben-2", key="another-secret-0123456789abcdefghij"), signed("ben-2", iss="someone-else"),
                signed("ben-2", ttl=-60)):
        r = client.get("/api/me", headers=bad)
        assert r.status_code == 401 and "X-OpenWebUI-User-Jwt refused" in r.json()["detail"], r.text
    # a short secret is a configuration error, said at start
    import pytest

    from service.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="ASSISTANT_PROXY_JWT_SECRET"):
        Settings(dev_mode=True, proxy_jwt_secret="short")
