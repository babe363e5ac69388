"""A deleted account's token never signs in as a later account (issue 28, H1).

Before: SQLite handed the next account the deleted newest account's id, and a token was checked by
id and version only, so ``DELETE /api/me`` then anyone's registration let the old token read and
act as the newcomer (``GET /api/me`` answered 200 with their name).
"""

from __future__ import annotations

import jwt
from sqlmodel import Session

from service import proxy
from service.models import User
from tests.service.conftest import signup

PROXY_KEY = "proxy-key-for-tests-0123456789abcdefghij"


def test_a_deleted_accounts_token_does_not_sign_in_as_the_next_account(app_factory, db_url):
    client = app_factory(database_url=db_url)
    signup(client, "alice")
    mallory = signup(client, "mallory")  # the newest account: its id was the one SQLite handed out again
    assert client.delete("/api/me", headers=mallory["headers"]).status_code == 204
    victim = signup(client, "victim")
    assert victim["id"] > mallory["id"]  # ids are never reused
    assert client.get("/api/me", headers=mallory["headers"]).status_code == 401
    assert client.get("/api/conversations", headers=mallory["headers"]).status_code == 401
    assert client.get("/api/me", headers=victim["headers"]).json()["username"] == "victim"


def test_a_token_is_bound_to_its_row_even_where_an_id_comes_back(app_factory):
    """Restored backups and reset sequences can still hand an id out twice: the salt holds then too."""
    client = app_factory()
    alice = signup(client, "alice")
    settings = client.app.state.settings
    claims = jwt.decode(alice["token"], settings.secret_key, algorithms=["HS256"])
    with Session(client.app.state.db) as s:  # the same id and version, another row's salt
        user = s.get(User, alice["id"])
        user.token_salt = "0" * 16
        s.add(user)
        s.commit()
    assert client.get("/api/me", headers=alice["headers"]).status_code == 401
    unsalted = jwt.encode({k: v for k, v in claims.items() if k != "ts"}, settings.secret_key, algorithm="HS256")
    assert client.get("/api/me", headers={"Authorization": f"Bearer {unsalted}"}).status_code == 401


def test_a_deleted_accounts_token_does_not_sign_in_as_a_user_the_proxy_creates(app_factory):
    client = app_factory(proxy_key=PROXY_KEY)
    mallory = signup(client, "mallory")
    assert client.delete("/api/me", headers=mallory["headers"]).status_code == 204
    newcomer = proxy.user_for_proxy(client.app.state.db, {proxy.USER_ID_HEADER: "owui-newcomer"})
    assert newcomer.id > mallory["id"]
    assert client.get("/api/me", headers=mallory["headers"]).status_code == 401
