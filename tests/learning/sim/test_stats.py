"""Win rate (ties count half) and its intervals, with expected numbers worked out by hand."""

from __future__ import annotations

import math

import pytest

from learning.sim.evaluate import bootstrap_interval, compare, win_rate, wilson_interval
from learning.sim.history import find_metric
from learning.sim.stats import (chi2_quantile, compare_pools, paired_difference, pooled_retest_spread, pooled_win_rate,
                                share)
from learning.sim.profiles import BUILTIN_PROFILES


def test_wilson_known_values():
    # p = 0.5, n = 10, z = 1.959964: centre = 0.5, half = z*sqrt(0.025 + z^2/400)/(1 + z^2/10)
    #   = 1.959964 * sqrt(0.025 + 0.0096036) / 1.3841459 = 1.959964 * 0.1860204 / 1.3841459 = 0.263408
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.5 - 0.263408, abs=1e-5) and hi == pytest.approx(0.5 + 0.263408, abs=1e-5)
    # all wins, n = 10: centre = (1 + 3.841459/20) / 1.3841459 = 0.861234;
    #   half = 1.959964 * sqrt(3.841459/400) / 1.3841459 = 1.959964 * 0.0979982 / 1.3841459 = 0.138767
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.722467, abs=1e-5) and hi == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_win_rate_counts_ties_half():
    # 3 wins, 2 ties, 1 loss: (3 + 1) / 6
    wr = win_rate([1, 1, 1, 0.5, 0.5, 0], resamples=500)
    assert (wr.wins, wr.ties, wr.losses, wr.n) == (3, 2, 1, 6)
    assert wr.rate == pytest.approx(4 / 6)
    assert wr.wilson == pytest.approx(wilson_interval(4, 6))
    assert wr.bootstrap[0] <= wr.rate <= wr.bootstrap[1]


def test_all_ties_is_one_half_and_bootstrap_collapses():
    wr = win_rate([0.5] * 8)
    assert wr.rate == 0.5 and wr.bootstrap == (0.5, 0.5)


def test_bootstrap_interval_brackets_the_mean():
    lo, hi = bootstrap_interval([0, 1] * 50, resamples=1000)
    assert 0.35 < lo < 0.5 < hi < 0.65


def test_compare_under_a_profile():
    concise = BUILTIN_PROFILES["concise"]
    prompts = ["How do I boil an egg?"] * 3
    short = "Boil the egg in water for eight minutes."
    long_ = short + " " + " ".join(["Then cool the egg in cold water and peel it carefully."] * 8)
    assert compare(concise, prompts, [short, long_, short], [long_, short, short]) == [1.0, 0.0, 0.5]


def test_find_metric_flat_nested_and_history():
    assert find_metric({"reward/mean": 1.5}, "reward/mean") == 1.5
    assert find_metric({"ppo": {"kl/per_token": 0.1}}, "kl/per_token") == 0.1
    assert find_metric({"history": [{"reward/mean": 1.0}, {"reward/mean": 2.0}]}, "reward/mean") == 2.0
    assert find_metric({"x": 1}, "reward/mean") is None


def test_pooled_win_rate_with_one_sample_each_is_the_win_rate():
    outcomes = [1, 1, 0.5, 0, 1, 0]
    pooled = pooled_win_rate([[o] for o in outcomes], resamples=500)
    plain = win_rate(outcomes, resamples=500)
    assert pooled["rate"] == pytest.approx(plain.rate) and pooled["wilson"] == pytest.approx(list(plain.wilson))
    assert (pooled["wins"], pooled["ties"], pooled["losses"], pooled["n"], pooled["prompts"]) == (3, 1, 2, 6, 6)
    assert pooled["bootstrap"] == pytest.approx(list(plain.bootstrap))


def test_pooled_win_rate_averages_per_prompt_then_over_prompts():
    # prompt A: 2 candidate x 2 base pairs, 3 wins 1 loss -> 0.75; prompt B: one tie of one pair -> 0.5.
    # Per prompt first: (0.75 + 0.5) / 2 = 0.625 (pooling every pair would give 3.5 / 5 = 0.7)
    pooled = pooled_win_rate([[1, 1, 1, 0], [0.5]], resamples=200)
    assert pooled["rate"] == pytest.approx(0.625) and pooled["per_prompt"] == [0.75, 0.5]
    assert (pooled["wins"], pooled["ties"], pooled["losses"], pooled["n"], pooled["prompts"]) == (3, 1, 1, 5, 2)
    # Wilson with n = prompts (the unit of independence): 1.25 of 2
    assert pooled["wilson"] == pytest.approx(list(wilson_interval(1.25, 2)))


def test_compare_pools_judges_every_candidate_sample_against_every_base_sample():
    concise = BUILTIN_PROFILES["concise"]
    short = "Boil the egg in water for eight minutes."
    long_ = short + " " + " ".join(["Then cool the egg in cold water and peel it carefully."] * 8)
    out = compare_pools(concise, ["How do I boil an egg?"], [[short, long_]], [[long_, short, short]])
    assert out == [[1.0, 0.5, 0.5, 0.5, 0.0, 0.0]]  # short vs (long, short, short), then long vs the same


def test_share_counts_every_sample_and_bootstraps_over_prompts():
    s = share([[True, False, False, False], [False] * 4], resamples=500)
    assert (s["share"], s["count"], s["n"]) == (1 / 8, 1, 8)
    assert s["wilson"] == pytest.approx(list(wilson_interval(1, 8)))
    assert s["bootstrap"][0] == 0.0 and s["bootstrap"][1] == pytest.approx(0.25)  # prompt means 0.25 and 0


def test_paired_difference_of_the_same_prompts():
    d = paired_difference([1.0, 0.5, 0.75], [0.5, 0.5, 0.25], resamples=500)
    assert d["difference"] == pytest.approx((0.5 + 0 + 0.5) / 3) and d["n"] == 3
    assert 0.0 <= d["bootstrap"][0] <= d["difference"] <= d["bootstrap"][1] <= 0.5


def test_chi2_quantile_is_close_to_the_tables():
    # exact values from the chi-square tables
    for p, df, exact in ((0.025, 8, 2.180), (0.975, 8, 17.535), (0.025, 24, 12.401), (0.975, 24, 39.364)):
        assert abs(chi2_quantile(p, df) - exact) / exact < 0.02


def test_pooled_retest_spread_is_the_rms_of_the_differences_with_a_chi_square_interval():
    # two users read 3 and 4 points apart on their two seed sets: RMS sqrt((9 + 16) / 2) = 3.536 points
    p = pooled_retest_spread([0.03, 0.04])
    assert p["users"] == 2
    assert abs(p["rms"] - math.sqrt(12.5) / 100) < 1e-12
    assert abs(p["one_reading"] - math.sqrt(12.5) / 100 / math.sqrt(2)) < 1e-12
    lo, hi = p["interval"]
    assert lo < p["rms"] < hi
    # eight users, every one 2 points apart: RMS 2, interval sqrt(8 * 4 / chi2_{0.975, 8}) .. sqrt(8 * 4 / chi2_{0.025, 8})
    p = pooled_retest_spread([0.02] * 8)
    assert abs(p["rms"] - 0.02) < 1e-12
    assert abs(p["interval"][0] - math.sqrt(8 * 0.0004 / 17.535)) < 2e-4
    assert abs(p["interval"][1] - math.sqrt(8 * 0.0004 / 2.180)) < 5e-4
    assert pooled_retest_spread([])["rms"] is None


def test_pool_style_is_the_mean_of_each_reply_trait_over_the_pool():
    from learning.sim.evaluate import pool_style

    # "Great! Thanks!": two sentences, two exclamation marks -> 1.0; "Fine." -> 0; "- a\n- b" -> lists 1.0
    style = pool_style(["hi", "list two"], [["Great! Thanks!", "Fine."], ["- a\n- b"]])
    assert style["exclamations"] == pytest.approx(1 / 3, abs=1e-4)
    assert style["lists"] == pytest.approx(1 / 3, abs=1e-4)
    assert style["very_short"] == 1.0  # every reply is under 15 words
    assert pool_style([], []) == {}
