"""Hashed text features (issue 26, item 2): the indicators, worked out by hand, and their hashing."""

from __future__ import annotations

import torch

from service.text_features import _bucket, hashed, hashed_matrix, tokens


def test_the_indicators_of_a_short_reply():
    text = "Colour, like paint.\n- Mix it!\nIn short: blue"
    assert set(tokens(text)) == {
        "w:colour", "w:like", "w:paint", "w:mix", "w:it", "w:in", "w:short", "w:blue",
        "b:colour like", "b:like paint", "b:paint mix", "b:mix it", "b:it in", "b:in short", "b:short blue",
        "f:colour", "f:like", "f:paint",  # the first sentence ends at "paint."
        "l:in", "l:short", "l:blue",  # the last line
        "p:,", "p:!", "p::", "p:-",
        "s:list",  # "- Mix it!"
    }


def test_presence_not_counts_signed_buckets_and_off():
    dim = 32
    got = hashed("tea and tea", dim)
    expected = torch.zeros(dim)
    # "w:tea" is there once, though the reply says "tea" twice: presence, not counts
    for token in ("w:tea", "w:and", "b:tea and", "b:and tea", "f:tea", "f:and", "l:tea", "l:and"):
        i, sign = _bucket(token, dim)
        expected[i] += sign
    assert torch.equal(got, expected)
    assert {_bucket(t, dim)[1] for t in ("w:tea", "w:and", "b:tea and", "b:and tea", "f:tea", "f:and")} == {1.0, -1.0}
    assert hashed_matrix(["a", "b"], 0).shape == (2, 0) and hashed_matrix([], 8).shape == (0, 8)
    assert torch.equal(hashed_matrix(["tea and tea", ""], dim), torch.stack([got, torch.zeros(dim)]))
