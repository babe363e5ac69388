"""One home for "whose adapter" (issue 29, item 4): the key, label, directory and SQL condition of a
scope were spelled in five places."""

from __future__ import annotations

from service.adapter_store import Scope, label_of
from service.models import AdapterVersion


def test_every_spelling_of_a_scope():
    user, glob = Scope(3), Scope(None)
    assert (user.key, glob.key, str(user)) == ("user:3", "global", "user:3")
    assert (user.label(2), glob.label(4)) == ("u3-v2", "global-v4")
    assert (user.dir(2), glob.dir(4), user.name) == ("user-3/v2", "global/v4", "user-3")
    assert label_of(AdapterVersion(user_id=3, version=2, path="x")) == "u3-v2"
    assert str(glob.where(AdapterVersion.user_id)) == "adapterversion.user_id IS NULL"  # never "= NULL", which matches nothing
    assert str(user.where(AdapterVersion.user_id)).startswith("adapterversion.user_id = ")
