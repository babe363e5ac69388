"""Report files: JSON, Markdown and plots under reports/<stamp>/, and latest.json for the dashboard."""

from __future__ import annotations

import json
from dataclasses import asdict

from learning.sim.evaluate import EvalConfig, win_rate
from learning.sim.report import write_report


def _report() -> dict:
    wr = win_rate([1, 1, 0.5, 0.5], resamples=200).as_dict()
    return {
        "kind": "evaluation", "created_at": "2026-01-01T00:00:00+00:00", "data_dir": "/d", "base_model": "m",
        "config": asdict(EvalConfig()), "judge": {"name": "wordlist (fallback)", "threshold": 0.5}, "method": "greedy",
        "policies": {"global": None, "adapters": ["u2-v1"], "info": {"u2-v1": {"scope": "user:2", "status": "promoted", "serving": True}}},
        "users": [{"username": "sim0-concise", "user_id": 2, "profile": "concise", "policy": "user", "adapter": "u2-v1",
                   "win_rate": wr, "mean_score": {"served": 1.0, "base": 0.5},
                   "reward_model": {"accuracy": 0.75, "length_baseline_accuracy": 0.25, "heldout_pairs": 4},
                   "candidate": None}],
        "harm": {"base": {"harmful_share": 0.25, "mean_score": 0.3, "n": 4}, "u2-v1": {"harmful_share": 0.0, "mean_score": 0.1, "n": 4}},
        "benign": {"base": {"refusal_rate": 0.0, "n": 4}, "u2-v1": {"refusal_rate": 0.25, "n": 4, "helpfulness_win_rate": wr}},
        "reward_model": {"global": {"accuracy": None, "length_baseline_accuracy": None, "heldout_pairs": 0}},
        "kl": {"u2-v1": 0.0123},
        "rounds": {"training": [{"run_id": 1, "user_id": 2, "status": "succeeded", "promoted": True, "reason": "promoted",
                                 "adapter_version_id": 1, "reward_mean": 0.4, "kl_per_token": 0.01, "harm_mean": 0.0}],
                   "simulation": [{"round": 1, "username": "sim0-concise", "mean_score": 0.2, "harmful_share": 0.0}]},
        "notes": [],
    }


def test_write_report_files_and_latest(tmp_path):
    paths = write_report(_report(), tmp_path, stamp="20260101-000000")
    assert paths["json"] == tmp_path / "20260101-000000" / "report.json"
    for key in ("win_rate", "harm", "rounds"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    latest = json.loads((tmp_path / "latest.json").read_text())
    assert latest["dir"] == "20260101-000000" and latest["files"]["markdown"] == "20260101-000000/report.md"
    md = paths["markdown"].read_text()
    assert "| sim0-concise | concise | u2-v1 | 75% |" in md  # (2 wins + 2 ties / 2) / 4
    assert "u2-v1 (promoted, serving) | 0% |" in md and "wordlist (fallback)" in md
    # a second report in the same second gets its own directory; latest points at it
    again = write_report(_report(), tmp_path, stamp="20260101-000000")
    assert again["json"].parent.name == "20260101-000000-1"
    assert json.loads((tmp_path / "latest.json").read_text())["dir"] == "20260101-000000-1"


def test_the_red_team_set_is_chosen_by_name_and_named_in_the_report(tmp_path):
    from learning.sim import prompts as P
    from learning.sim.redteam_b import RED_TEAM_B

    assert EvalConfig().red_team_pool() == P.RED_TEAM_PROMPTS
    assert EvalConfig(red_team_set="b").red_team_pool() == RED_TEAM_B
    assert not set(RED_TEAM_B) & set(P.RED_TEAM_PROMPTS)
    try:
        EvalConfig(red_team_set="c").red_team_pool()
    except ValueError as exc:
        assert "choose one of a, b" in str(exc)
    else:
        raise AssertionError("an unknown red-team set was accepted")
    report = _report()
    report["config"] = asdict(EvalConfig(red_team_set="b"))
    assert "red-team (set B, x8)" in write_report(report, tmp_path, stamp="s")["markdown"].read_text()


def test_the_evaluation_chooses_best_of_n_by_the_servers_population_weight_unless_told():
    import argparse

    from learning.sim.evaluate import add_evaluate_arguments, best_of_population_weight
    from service.settings import Settings

    p = argparse.ArgumentParser()
    add_evaluate_arguments(p)
    served = Settings(dev_mode=True, best_of_n_population_weight=0.5)
    assert best_of_population_weight(p.parse_args([]), served) == 0.5
    assert best_of_population_weight(p.parse_args(["--best-of-population-weight", "1"]), served) == 1.0
    assert Settings(dev_mode=True).best_of_n_population_weight == 0.0
    assert EvalConfig().best_of_population_weight == 0.0
