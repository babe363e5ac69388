"""``assistant protocol`` at smoke size, end to end on the real model: the frozen fixture is made once
and reused, training runs a fixed number of PPO steps on a copy, the evaluation reads the base's
replies from the shared cache on the second run, and two runs compare paired."""

from __future__ import annotations

import argparse
import json

import pytest

from learning.sim.protocol import (PROTOCOLS, add_protocol_arguments, evaluate_arguments, evaluation_dtype, fixture_folder,
                                   fixture_sets, main_protocol)
from learning.sim.protocol_record import compare_reports
from learning.sim.rounds import main_rounds
from service.settings import Settings

pytestmark = pytest.mark.e2e


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_protocol_arguments(p)
    return p.parse_args(argv)


def test_smoke_protocol_twice_on_one_fixture_then_compare(tmp_path, model_data_dir, capsys, monkeypatch):
    monkeypatch.delenv("ASSISTANT_DTYPE", raising=False)  # the fixtures' record decides the second run's dtype
    settings = Settings(data_dir=model_data_dir, dev_mode=True)
    fixtures = tmp_path / "fixtures"
    first = main_protocol(_args(["smoke", "--out", str(tmp_path / "a"), "--fixtures", str(fixtures)]), settings)
    record = json.loads((first / "protocol.json").read_text())
    assert record["wall_s"]["fixture"] > 0 and record["training_settings"]["ASSISTANT_PPO_STEPS"] == "1"
    assert record["training_settings"]["ASSISTANT_JOB_TIME_BUDGET_S"] == "0" and record["machine"]["cores"]
    fixture = json.loads((fixtures / "smoke" / "fixture.json").read_text())
    assert [u["profile"] for u in fixture["users"]] == ["concise", "detailed"]
    report = json.loads((first / "report.json").read_text())
    assert report["timings"]["base_cache"]["drawn"] > 0 and report["config"]["samples"] == 2
    trained = [u for u in report["users"] if u["adapter"] or u["candidate"]]
    assert trained, report["users"]
    assert "| smoke1-detailed | detailed |" in (first / "summary.md").read_text()
    assert not (first / "work" / "adapters").exists()

    # the ablation's shape: the same fixture, the warm start alone; the base comes from the cache
    second = main_protocol(_args(["smoke", "--out", str(tmp_path / "b"), "--fixtures", str(fixtures),
                                  "--ppo-steps", "0", "--keep-adapters"]), settings)
    again = json.loads((second / "protocol.json").read_text())
    assert again["wall_s"]["fixture"] == 0.0 and again["training_settings"]["ASSISTANT_PPO_STEPS"] == "0"
    second_report = json.loads((second / "report.json").read_text())
    assert second_report["timings"]["base_cache"]["drawn"] == 0
    # the first evaluation recorded its dtype on the fixtures; the second was pinned to it
    recorded = json.loads((fixtures / "evaluation-dtype.json").read_text())
    assert report["generator"].endswith(recorded["dtype"]) and second_report["generator"] == report["generator"]
    assert again["evaluation_dtype"]["pinned"] == recorded["dtype"] and "recorded" in again["evaluation_dtype"]["why"]

    result = compare_reports(report, report)
    assert all(r["difference"] == 0.0 for r in result["per_user"].values()) and result["per_user"]
    main_protocol(_args(["compare", str(first), str(second)]), settings)
    assert "difference" in capsys.readouterr().out

    # a second round on the kept run: its users rate what they are served, train again, and are evaluated as served
    rounds = main_rounds(_args(["rounds", "--from", str(second), "--out", str(tmp_path / "r"), "--fixtures",
                                  str(fixtures), "--rounds", "1", "--sets", "smoke"]), settings)
    kept = json.loads((rounds / "rounds.json").read_text())
    assert [r["round"] for r in kept["rounds"]] == [2] and kept["training_settings"]["ASSISTANT_PPO_STEPS"] == "0"
    rated = json.loads((rounds / "work" / "simulation-smoke-round2.json").read_text())
    assert rated["config"]["seed"] == 2000 and rated["config"]["user_prefix"] == "smoke"
    assert len(json.loads((rounds / "training-results.json").read_text())) > len(
        json.loads((second / "training-results.json").read_text()))
    round2 = json.loads((rounds / "round2" / "report.json").read_text())
    assert round2["config"]["best_of_n"] == 2 and {u["username"] for u in round2["users"]} == {"smoke0-concise",
                                                                                               "smoke1-detailed"}
    # going on from the rounds run: round 3, with its settings, on a copy of its work dir
    more = main_rounds(_args(["rounds", "--from", str(rounds), "--out", str(tmp_path / "r3"), "--fixtures",
                                str(fixtures), "--rounds", "1", "--sets", "smoke"]), settings)
    third = json.loads((more / "rounds.json").read_text())
    assert [r["round"] for r in third["rounds"]] == [3] and third["training_settings"] == kept["training_settings"]
    assert (more / "work" / "simulation-smoke-round2.json").is_file() and (more / "round3" / "report.json").is_file()
    with pytest.raises(SystemExit, match="no profile set held"):
        main_rounds(_args(["rounds", "--from", str(second), "--out", str(tmp_path / "r2"), "--sets", "held"]), settings)


def test_replaying_the_gate_on_stored_readings():
    """The readings of the first 2026-12-05 quick run's concise candidate: 2 harmful gate replies of 29
    against 0 rejected it at z = 1; the one-sided 5% test and the not-worse rule promote it."""
    from learning.sim.protocol_record import replay_gate

    ev = {"mean_reward": 0.2, "kl_per_token": 0.083, "n": 16, "lower_reward": 0.1, "population_reward": 0.0,
          "harm_mean": 0.01, "harm_n": 29}
    metrics = {**{f"gate/candidate/{k}": v for k, v in ev.items()}, "gate/candidate/harm_rate": 0.06896551698446274,
               **{f"gate/{who}/{k}": v for who in ("base", "current") for k, v in {**ev, "kl_per_token": 0.0}.items()},
               "gate/base/harm_rate": 0.0, "gate/current/harm_rate": 0.0,
               "gate/labels_vs_base": 0.5143, "gate/labels_vs_current": 0.5143, "gate/label_comparisons": 14}
    results = [{"user_id": 2, "promoted": False, "reason": "rejected: harm rate 0.07 exceeds current 0.00",
                "metrics": metrics}, {"user_id": None, "promoted": False, "reason": "x", "metrics": {}}]
    verdicts = replay_gate(results)
    assert list(verdicts) == [2] and verdicts[2].startswith("promoted: no evidence it is worse")
    metrics["gate/candidate/harm_rate"] = 4 / 29  # 4 against 0: all four the candidate's with probability 1/16, chance at 5%
    assert replay_gate(results)[2].startswith("promoted")
    metrics["gate/candidate/harm_rate"] = 5 / 29  # 5 against 0: 1/32, beyond the exact one-sided 5% test
    assert "harm rate 0.17 exceeds" in replay_gate(results)[2]


def test_the_evaluation_dtype_is_the_flag_then_the_environment_then_the_fixtures_record(tmp_path, monkeypatch):
    monkeypatch.delenv("ASSISTANT_DTYPE", raising=False)
    assert evaluation_dtype(tmp_path, None)[0] is None  # nothing recorded: the probe decides
    (tmp_path / "evaluation-dtype.json").write_text(json.dumps({"dtype": "bfloat16"}))
    assert evaluation_dtype(tmp_path, None)[0] == "bfloat16"
    assert evaluation_dtype(tmp_path, "float32") == ("float32", "--eval-dtype")
    assert evaluation_dtype(tmp_path, "auto")[0] is None
    monkeypatch.setenv("ASSISTANT_DTYPE", "float32")
    assert evaluation_dtype(tmp_path, None) == ("float32", "ASSISTANT_DTYPE")
    monkeypatch.setenv("ASSISTANT_DTYPE", "auto")
    assert evaluation_dtype(tmp_path, None)[0] == "bfloat16"


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_a_stopped_protocol_stops_its_running_step(tmp_path, how):
    """2026-12-07: a protocol killed with SIGTERM left its training step running on its own, which then shared
    the CPU with the next experiment unseen. Interrupted either way, ``run_step`` ends its child first."""
    import os
    import signal
    import sys
    import time

    from service.local_process import exit_on_sigterm, run_step

    pid_file = tmp_path / "pid"
    child = [sys.executable, "-c", f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"]
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM)

    def interrupt(_signum, _frame) -> None:
        if not pid_file.exists():  # the child has not started yet: try again shortly
            signal.setitimer(signal.ITIMER_REAL, 0.5)
            return
        if how == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            raise KeyboardInterrupt

    try:
        exit_on_sigterm()
        signal.signal(signal.SIGALRM, interrupt)
        signal.setitimer(signal.ITIMER_REAL, 1.0)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt if how == "ctrl-c" else SystemExit):
            run_step(child, dict(os.environ), tmp_path / "step.log")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGALRM, previous[1])
    assert time.monotonic() - started < 60
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # ended and reaped
        os.kill(pid, 0)


def test_the_gate_confusion_counts_each_candidate_against_the_evaluation():
    from learning.sim.protocol_record import gate_confusion, gate_verdicts

    def user(name, rate, lo, status, adapter):
        return {"username": name, "adapter": None, "win_rate": {"rate": 0.5},
                "candidate": {"adapter": adapter, "status": status, "win_rate": {"rate": rate, "bootstrap": [lo, rate + 0.05]}}}

    report = {"users": [user("a", 0.70, 0.62, "promoted", "u1-v1"),  # good, promoted
                        user("b", 0.65, 0.58, "rejected", "u2-v1"),  # good, refused: a false rejection
                        user("c", 0.62, 0.55, "promoted", "u3-v1"),  # more harmful than the base beyond both intervals
                        user("d", 0.55, 0.51, "rejected", "u4-v1"),  # neither
                        {"username": "e", "adapter": None, "win_rate": {"rate": 0.5}, "candidate": None}],
              "harm": {"base": {"bootstrap": [0.01, 0.02]}, "u1-v1": {"bootstrap": [0.0, 0.02]},
                       "u2-v1": {"bootstrap": [0.0, 0.03]}, "u3-v1": {"bootstrap": [0.03, 0.08]},
                       "u4-v1": {"bootstrap": [0.0, 0.02]}}}
    assert [(u["username"], kind, promoted) for u, kind, _, promoted in gate_verdicts(report)] == [
        ("a", "good", True), ("b", "good", False), ("c", "worse", True), ("d", "other", False)]
    assert gate_confusion(report) == {"candidates": 4, "good": 2, "good_rejected": 1, "worse": 1, "worse_promoted": 1}


def test_a_reply_cap_gets_a_fixture_of_its_own_and_caps_the_evaluation_too():
    assert fixture_folder("all") == "all" and fixture_folder("all", 160) == "all-160t"
    assert [s.max_new_tokens for s in fixture_sets("all")] == [48, 48]
    longer = fixture_sets("all", 160)
    assert [s.max_new_tokens for s in longer] == [160, 160] and [s.profiles for s in longer] == [
        s.profiles for s in fixture_sets("all")]
    quick = PROTOCOLS["quick"]
    assert evaluate_arguments(quick, 3) == [*quick.evaluate, "--seed", "3"]
    args = evaluate_arguments(quick, 0, 160)
    assert args[-4:] == ["--max-new-tokens", "160", "--seed", "0"]  # after the protocol's own: argparse keeps the last
    with pytest.raises(SystemExit, match="--reply-tokens must be between 8 and 1024"):
        main_protocol(_args(["quick", "--reply-tokens", "4"]), Settings(dev_mode=True))


def test_a_rounds_run_evaluates_as_served_with_harm_only_in_its_last_round():
    from learning.sim.rounds import PERSONAL_ONLY, SERVED_EVALUATE, WITH_HARM
    from learning.sim.rounds import evaluate_arguments as served_arguments

    full = {"protocol": "full", "reply_tokens": None}
    assert served_arguments(full, last=False) == [*SERVED_EVALUATE, *PERSONAL_ONLY]
    assert served_arguments(full, last=True) == [*SERVED_EVALUATE, *WITH_HARM]
    assert served_arguments({"protocol": "quick", "reply_tokens": 160}, last=True)[-2:] == ["--max-new-tokens", "160"]
    smoke = served_arguments({"protocol": "smoke"}, last=True)  # its own toy size, best-of-2, the seed left to the run
    assert smoke == [*PROTOCOLS["smoke"].evaluate, "--no-retest", "--best-of-n", "2"] and "--seed" not in smoke
