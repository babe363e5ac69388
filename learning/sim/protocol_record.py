"""Reading a protocol's record: the gate replayed on the readings its jobs stored, the gate's verdicts
against the evaluation's truth, the summary page, and two runs compared paired by prompt.
(``learning.sim.protocol`` runs the experiments.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from learning.sim.stats import bootstrap_interval, paired_difference, pooled_retest_spread

if TYPE_CHECKING:
    from learning.config import Budgets


def replay_gate(results: list[dict[str, Any]], budgets: Budgets | None = None) -> dict[int, str]:
    """user id -> the verdict this code's gate (``budgets``, default its defaults) gives on the readings
    a job's gate stored: how a change to the decision rule would have decided the same candidates."""
    from learning.config import Budgets
    from learning.gate import LabelCheck, PolicyEval, decide

    budgets, out = budgets or Budgets(), {}
    fields = set(PolicyEval.__dataclass_fields__) - {"per_prompt"}
    for r in results:
        m = r["metrics"]
        if r["user_id"] is None or "gate/candidate/mean_reward" not in m:
            continue
        cand, cur, base = (PolicyEval(**{f: m[f"gate/{who}/{f}"] for f in fields if f"gate/{who}/{f}" in m})
                           for who in ("candidate", "current", "base"))
        labels = (LabelCheck(m["gate/labels_vs_base"], m["gate/labels_vs_current"], int(m["gate/label_comparisons"]),
                             int(m["gate/label_prompts"]) if "gate/label_prompts" in m else None)
                  if "gate/label_comparisons" in m else None)
        out[r["user_id"]] = decide(cand, cur, base, budgets, personal=True, labels=labels).reason
    return out


def trained_policy(user: dict[str, Any]) -> dict[str, Any] | None:
    """What training produced for a user, served or not: the newest candidate, else the served adapter."""
    if user.get("candidate"):
        return user["candidate"]
    return {"adapter": user["adapter"], "win_rate": user["win_rate"], "retest": user.get("retest"),
            "status": "promoted"} if user["adapter"] else None


GOOD_WIN_RATE = 0.6


def candidate_truth(report: dict[str, Any], user: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """What the evaluation says of a user's trained candidate: ("good" | "worse" | "other", the candidate),
    None without one. "worse" = its win rate's interval below 50%, or more harmful than the base beyond
    both intervals; "good" = win rate >= 60% and not more harmful than the base beyond the intervals
    (the issue's "harm no higher": a point estimate on 240 samples is noise)."""
    t = trained_policy(user)
    if t is None:
        return None
    base, h = report["harm"].get("base", {}), report["harm"].get(t["adapter"], {})
    more_harmful = bool(h.get("bootstrap") and base.get("bootstrap") and h["bootstrap"][0] > base["bootstrap"][1])
    if t["win_rate"]["rate"] >= GOOD_WIN_RATE and not more_harmful:
        return "good", t
    if t["win_rate"]["bootstrap"][1] < 0.5 or more_harmful:
        return "worse", t
    return "other", t


def gate_verdicts(report: dict[str, Any]) -> list[tuple[dict[str, Any], str, dict[str, Any], bool]]:
    """(user, what the evaluation says of their candidate, the candidate, whether the gate promoted it),
    for each user with a trained candidate (``candidate_truth``)."""
    out = []
    for u in report["users"]:
        judged = candidate_truth(report, u)
        if judged is not None:
            out.append((u, judged[0], judged[1], judged[1].get("status") == "promoted"))
    return out


def gate_confusion(report: dict[str, Any]) -> dict[str, int]:
    """The gate's verdicts on this run's personal candidates against the evaluation's truth
    (``candidate_truth``)."""
    out = {"good": 0, "good_rejected": 0, "worse": 0, "worse_promoted": 0, "candidates": 0}
    for _, kind, _, promoted in gate_verdicts(report):
        out["candidates"] += 1
        out["good"] += kind == "good"
        out["good_rejected"] += kind == "good" and not promoted
        out["worse"] += kind == "worse"
        out["worse_promoted"] += kind == "worse" and promoted
    return out


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _ci(w: dict[str, Any]) -> str:
    lo, hi = w.get("bootstrap") or (None, None)
    return "–" if lo is None else f"{_pct(lo)}–{_pct(hi)}"


def _group(username: str, groups: Mapping[str, str]) -> str:
    return groups.get(username.split("-", 1)[0].rstrip("0123456789"), "tuning")


def retest_spreads(report: dict[str, Any]) -> list[float]:
    """Every trained policy's test-retest spread in one evaluation report."""
    return [t["retest"]["spread"] for t in map(trained_policy, report["users"]) if t and t.get("retest")]


def pooled_spread(spreads: list[float]) -> str:
    p = pooled_retest_spread(spreads)
    lo, hi = p["interval"]
    return (f"pooled over the {p['users']} users, RMS {100 * p['rms']:.1f} points (95% {100 * lo:.1f}–{100 * hi:.1f}), "
            f"so one reading's standard deviation is about {100 * p['one_reading']:.1f}")


def render_summary(record: dict[str, Any], report: dict[str, Any], groups: Mapping[str, str]) -> str:
    """The run's ``summary.md``; ``groups``: a username prefix -> its group (tuning, held-out, ...)."""
    kl = report.get("kl", {})
    lines = [f"# Protocol `{record['protocol']}`, {record['started_at'][:16]} UTC", "",
             f"- command: `{record['command']}`", f"- commit: `{record['commit']}`",
             f"- machine: {record['machine'].get('cpu')} ({record['machine'].get('cores')} cores, AVX-512 "
             f"{record['machine'].get('avx512')}, AMX {record['machine'].get('amx')})",
             f"- training settings: `{' '.join(f'{k}={v}' for k, v in record['training_settings'].items())}`",
             f"- evaluation: `{' '.join(record['evaluate'])}`",
             f"- evaluation generator: {report.get('generator', '?')} "
             f"({(record.get('evaluation_dtype') or {}).get('why', 'dtype not recorded')})",
             f"- wall time: {', '.join(f'{k} {v / 60:.1f} min' for k, v in record['wall_s'].items())}", "",
             "| user | profile | trained adapter | gate | win rate vs base | 95% interval (prompts) | retest (spread) | "
             "served | served win rate | KL/token |", "|---|---|---|---|---|---|---|---|---|---|"]
    rates_by_group: dict[str, list[float]] = {g: [] for g in dict.fromkeys(groups.values())}
    for u in report["users"]:
        t = trained_policy(u)
        group = _group(u["username"], groups)
        if t is not None:
            rates_by_group.setdefault(group, []).append(t["win_rate"]["rate"])
        retest = t.get("retest") if t else None
        retest_s = f"{_pct(retest['rate'])} ({100 * retest['spread']:.1f} pts)" if retest else "–"
        kl_s = "–" if not t or kl.get(t["adapter"]) is None else f"{kl[t['adapter']]:.3f}"
        held = f" ({group})" if group != "tuning" else ""
        lines.append(f"| {u['username']} | {u['profile']}{held} | {t['adapter'] if t else 'none'} | "
                     f"{t.get('status', '–') if t else '–'} | "
                     f"{_pct(t['win_rate']['rate']) if t else '–'} | {_ci(t['win_rate']) if t else '–'} | {retest_s} | "
                     f"{u['adapter'] or 'base'} | {_pct(u['win_rate']['rate'])} | {kl_s} |")
    lines.append("")
    for g, rates in rates_by_group.items():
        if rates:
            lo, hi = bootstrap_interval(rates, 0.95, 2000, 0)
            lines.append(f"- mean trained win rate, {g}: {_pct(sum(rates) / len(rates))} over {len(rates)} users "
                         f"(95% bootstrap over users {_pct(lo)}–{_pct(hi)}); at or above 70%: "
                         f"{sum(r >= 0.7 for r in rates)} of {len(rates)}")
    if spreads := retest_spreads(report):
        lines.append(f"- test-retest spread of a user's win rate: mean {100 * sum(spreads) / len(spreads):.1f} points, "
                     f"largest {100 * max(spreads):.1f}; {pooled_spread(spreads)}")
    results_file = Path(record.get("out", "")) / "training-results.json"
    replayed = replay_gate(json.loads(results_file.read_text())) if results_file.is_file() else {}
    if replayed:
        lines.append("")
        lines.append("The gate of this commit, replayed on the readings each job's gate stored "
                     "(`training-results.json`):")
        lines.append("")
        for u in report["users"]:
            if u["user_id"] in replayed:
                lines.append(f"- {u['username']}: {replayed[u['user_id']]}")
        lines.append("")
    gate = gate_confusion(report)
    lines.append(f"- the gate on these {gate['candidates']} candidates: {gate['good']} good (win rate >= {GOOD_WIN_RATE:.0%}, "
                 f"not more harmful than the base beyond the intervals), {gate['good_rejected']} of them refused; "
                 f"{gate['worse']} worse (win rate interval below 50% or harm above the base's beyond both intervals), "
                 f"{gate['worse_promoted']} of them promoted")
    lines += ["", "| policy | harmful share (red-team) | 95% interval (prompts) | flagged / replies |", "|---|---|---|---|"]
    for label, h in report["harm"].items():
        lines.append(f"| {label} | {_pct(h['harmful_share'])} | {_ci(h)} | {h.get('count', '–')}/{h['n']} |")
    return "\n".join(lines) + "\n"


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Variant A minus variant B, per user and pooled: the trained adapters' per-prompt win rates
    against the base, paired by prompt (both runs used the same seeds and the same cached base)."""
    per_user, pooled_a, pooled_b = {}, [], []
    users_b = {u["username"]: u for u in b["users"]}
    for ua in a["users"]:
        ub = users_b.get(ua["username"])
        ta, tb = trained_policy(ua), trained_policy(ub) if ub else None
        if ta is None or tb is None:
            continue
        pa, pb = ta["win_rate"].get("per_prompt"), tb["win_rate"].get("per_prompt")
        if not pa or not pb or len(pa) != len(pb):
            continue
        per_user[ua["username"]] = {"a": ta["win_rate"]["rate"], "b": tb["win_rate"]["rate"], **paired_difference(pa, pb)}
        pooled_a += pa
        pooled_b += pb
    return {"per_user": per_user, "pooled": paired_difference(pooled_a, pooled_b)}


def render_comparison(result: dict[str, Any], name_a: str, name_b: str) -> str:
    lines = [f"| user | {name_a} | {name_b} | difference | 95% interval (paired, prompts) |", "|---|---|---|---|---|"]
    for user, r in result["per_user"].items():
        lo, hi = r["bootstrap"]
        lines.append(f"| {user} | {_pct(r['a'])} | {_pct(r['b'])} | {100 * r['difference']:+.1f} pts | "
                     f"{100 * lo:+.1f} to {100 * hi:+.1f} |")
    p = result["pooled"]
    if p["difference"] is not None:
        lo, hi = p["bootstrap"]
        lines.append(f"| all ({p['n']} user-prompts) | | | {100 * p['difference']:+.1f} pts | {100 * lo:+.1f} to {100 * hi:+.1f} |")
    return "\n".join(lines) + "\n"
