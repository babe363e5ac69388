"""Hashed text features (issue 26, item 2): the indicators, worked out by hand, and their hashing."""

from __future__ import annotations

import pytest
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


def test_the_text_basis_is_the_replies_principal_directions_at_unit_spread():
    from service.text_features import projection_from_state, text_block, text_directions

    dim = 64
    replies = ["tea", "tea", "coffee", "coffee"]
    mu = hashed_matrix(replies, dim).mean(0)
    # the centred features are +-d/2 with d = hashed(tea) - hashed(coffee): one direction, the rest of K dropped
    proj = text_directions(replies, mu, 3)
    assert proj.shape == (dim, 1)
    d = hashed("tea", dim) - hashed("coffee", dim)
    cosine = torch.nn.functional.cosine_similarity(proj[:, 0], d, dim=0)
    assert abs(float(cosine)) == pytest.approx(1.0, abs=1e-5)
    z = text_block(replies, mu, proj)[:, 0]
    assert float(z.std()) == pytest.approx(1.0, abs=1e-5)  # unit spread, like a standardised trait
    assert float(z[0]) == pytest.approx(float(z[1])) and float(z[0]) == pytest.approx(-float(z[2]))
    # without a projection every bucket is its own column; off is (N, 0); the JSON round trip keeps the shape
    assert torch.equal(text_block(replies, mu), hashed_matrix(replies, dim) - mu)
    assert text_block(replies, torch.zeros(0)).shape == (4, 0)
    assert torch.equal(projection_from_state(proj.tolist(), dim), proj)
    assert projection_from_state([], dim).shape == (dim, 0) and projection_from_state(None, 0).shape == (0, 0)
    assert text_directions(["same", "same"], hashed_matrix(["same"], dim)[0], 4).shape == (dim, 0)
