"""Writing an evaluation report: JSON, a Markdown summary and PNG plots.

Layout under ``<data_dir>/reports/``::

    <YYYYmmdd-HHMMSS>/report.json      the whole report
    <YYYYmmdd-HHMMSS>/report.md        tables for people
    <YYYYmmdd-HHMMSS>/win_rate.png     personal win rate per user, with its interval
    <YYYYmmdd-HHMMSS>/harm.png         harmful share and refusal rate per policy
    <YYYYmmdd-HHMMSS>/rounds.png       PPO reward and KL per training round, and served-reply score per round
    latest.json                        the newest report, plus "files" relative to reports/

matplotlib runs on the Agg backend (no display needed).
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, float)):
        if pct:
            return f"{100 * x:.0f}%"
        if isinstance(x, float):
            return f"{x:.1e}" if 0 < abs(x) < 1e-3 else f"{x:.3f}"
        return str(x)
    return str(x)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _interval(x: dict[str, Any]) -> str:
    lo, hi = x.get("bootstrap") or x.get("wilson") or (None, None)
    return f"{_fmt(lo, True)}–{_fmt(hi, True)}" if lo is not None else "–"


def _retest(r: dict[str, Any] | None) -> str:
    return f"{_fmt(r['rate'], True)} ({r['spread'] * 100:.1f} pts)" if r else "–"


def render_markdown(report: dict[str, Any]) -> str:
    conf = int(100 * report["config"]["confidence"])
    lines = [
        f"# Evaluation {report['created_at']}",
        "",
        f"Base model `{report['base_model']}`; {report['method']}; harm judge **{report['judge']['name']}** "
        f"(threshold {report['judge']['threshold']}). Prompts: {report['config']['heldout_prompts']} held-out "
        f"(x{report['config'].get('samples', 1)}), {report['config']['red_team_prompts']} red-team "
        f"(set {report['config'].get('red_team_set', 'a').upper()}, x{report['config'].get('red_team_samples', 1)}), {report['config']['benign_prompts']} benign; "
        f"{report['config']['max_new_tokens']} new tokens. Intervals: {conf}% percentile bootstrap over prompts.",
        "",
        "## Personalisation: served policy vs base, under each user's own preference",
        "",
    ]
    rows = []
    for u in report["users"]:
        w = u["win_rate"]
        rm = u["reward_model"]
        c = u.get("candidate")
        rows.append([u["username"], u["profile"], u["adapter"] or "base", _fmt(w["rate"], True), _interval(w),
                     _retest(u.get("retest")), f"{w['wins']}/{w['ties']}/{w['losses']}", _fmt(u["mean_score"]["served"]),
                     _fmt(u["mean_score"]["base"]), _fmt(rm["accuracy"], True), _fmt(rm["length_baseline_accuracy"], True),
                     f"{c['adapter']} ({c['status']}): {_fmt(c['win_rate']['rate'], True)} ({_interval(c['win_rate'])})"
                     if c else "–"])
    lines += _table(["user", "profile", "served by", "win rate", f"{conf}% interval", "retest (spread)", "W/T/L (pairs)",
                     "score served", "score base", "RM held-out acc.", "longer-wins", "newest candidate: win rate"], rows)
    best = report.get("best_of") or {}
    if best:
        cfg = report["config"]
        lines += ["", f"## Personal best-of-{cfg.get('best_of_n')} (blocks of {cfg.get('best_of_block') or 'a whole reply'})", "",
                  "Every adapter's replies above were chosen by its stored reward among the candidates (`service.best_of_n`)."
                  + (" \"base + reranking\": the base's replies chosen by the population's reward alone." if cfg.get("best_of_base") else ""),
                  ""]
        rows = []
        for u in report["users"]:
            s = best.get(u["adapter"] or "", {})
            bb = (u.get("base_best_of") or {}).get("win_rate")
            rows.append([u["username"], u["adapter"] or "base", _fmt(u["win_rate"]["rate"], True),
                         _fmt(bb["rate"], True) + f" ({_interval(bb)})" if bb else "–",
                         _fmt(s.get("changed_share"), True), _fmt(s.get("dropped"))])
        lines += _table(["user", "adapter", "served win rate (adapter + best-of-n)", "base + reranking: win rate",
                         "blocks where best-of-n changed the reply", "candidates dropped (harm)"], rows)
    g = report["reward_model"]["global"]
    lines += ["", f"Global reward model held-out pairwise accuracy: {_fmt(g['accuracy'], True)} "
                  f"(\"longer reply wins\": {_fmt(g['length_baseline_accuracy'], True)}, {_fmt(g['heldout_pairs'])} pairs).",
              "", "## Harm and refusals", ""]
    rows = []
    for label, h in report["harm"].items():
        b = report["benign"].get(label, {})
        hw = b.get("helpfulness_win_rate")
        info = report["policies"].get("info", {}).get(label)
        name = label if info is None else f"{label} ({info['status']}{', serving' if info['serving'] else ''})"
        rows.append([name, _fmt(h["harmful_share"], True), _interval(h), f"{h.get('count', '–')}/{h['n']}", _fmt(h["mean_score"]),
                     _fmt(b.get("refusal_rate"), True), _fmt(hw["rate"], True) if hw else "–", _fmt(report["kl"].get(label))])
    lines += _table(["policy", "harmful share (red-team)", f"{conf}% interval", "flagged / replies", "mean judge score",
                     "refusal rate (benign)",
                     "helpfulness win rate vs base", "KL to base / token"], rows)
    training = report["rounds"]["training"]
    if training:
        lines += ["", "## Training rounds", ""]
        lines += _table(["run", "scope", "status", "promoted", "PPO reward", "KL / token", "reason"],
                        [[str(t["run_id"]), "global" if t["user_id"] is None else f"user {t['user_id']}", _fmt(t["status"]),
                          _fmt(t["promoted"]), _fmt(t["reward_mean"]), _fmt(t["kl_per_token"]), (t["reason"] or "")[:80]]
                         for t in training])
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def plot_win_rates(report: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    users = report["users"]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(users) + 2), 3.5))
    xs = range(len(users))
    rates = [u["win_rate"]["rate"] for u in users]
    err = [[r - u["win_rate"]["wilson"][0] for r, u in zip(rates, users)],
           [u["win_rate"]["wilson"][1] - r for r, u in zip(rates, users)]]
    ax.bar(xs, rates, yerr=err, capsize=4, color="tab:blue")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(list(xs), [f"{u['username']}\n({u['adapter'] or 'base'})" for u in users], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("win rate vs base")
    ax.set_title("Personal win rate vs base (own preference, Wilson interval)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_harm(report: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    labels = list(report["harm"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(max(6, 1.2 * len(labels) + 4), 3.5))
    a1.bar(labels, [report["harm"][k]["harmful_share"] for k in labels], color="tab:red")
    a1.set_ylim(0, 1)
    a1.set_title("Harmful share on red-team prompts", fontsize=10)
    a2.bar(labels, [report["benign"][k]["refusal_rate"] for k in labels], color="tab:orange")
    a2.set_ylim(0, 1)
    a2.set_title("Refusal rate on benign prompts", fontsize=10)
    for a in (a1, a2):
        a.tick_params(axis="x", labelsize=7, rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_rounds(report: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    training = report["rounds"]["training"]
    scopes = sorted({t["user_id"] for t in training}, key=lambda s: (s is not None, s or 0))
    for ax, key, title in ((axes[0], "reward_mean", "PPO reward (last step) per run"),
                           (axes[1], "kl_per_token", "KL to base per token per run")):
        for scope in scopes:
            pts = [(t["run_id"], t[key]) for t in training if t["user_id"] == scope and t[key] is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label="global" if scope is None else f"user {scope}")
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("training run")
        ax.set_title(title, fontsize=9)
    sim = report["rounds"]["simulation"]
    for username in sorted({s["username"] for s in sim}):
        pts = [(s["round"], s["mean_score"]) for s in sim if s["username"] == username and s["mean_score"] is not None]
        if pts:
            axes[2].plot(*zip(*pts), marker="o", label=username)
    if axes[2].lines:
        axes[2].legend(fontsize=7)
    else:
        axes[2].text(0.5, 0.5, "no simulation rounds", ha="center", va="center", transform=axes[2].transAxes)
    axes[2].set_xlabel("simulation round")
    axes[2].set_title("Served reply, own-preference score", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: dict[str, Any], reports_dir: Path, stamp: str | None = None) -> dict[str, Path]:
    """Write the report's files under ``reports_dir/<stamp>/`` and ``reports_dir/latest.json``."""
    import matplotlib

    matplotlib.use("Agg")
    stamp = stamp or datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = reports_dir / stamp
    n = 1
    while out.exists():  # two reports in one second: never overwrite
        out = reports_dir / f"{stamp}-{n}"
        n += 1
    out.mkdir(parents=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "win_rate": out / "win_rate.png",
             "harm": out / "harm.png", "rounds": out / "rounds.png"}
    report = {**report, "dir": out.name, "files": {k: str(p.relative_to(reports_dir)) for k, p in paths.items()}}
    paths["json"].write_text(json.dumps(report, indent=2, default=str))
    paths["markdown"].write_text(render_markdown(report))
    plot_win_rates(report, paths["win_rate"])
    plot_harm(report, paths["harm"])
    plot_rounds(report, paths["rounds"])
    latest = reports_dir / "latest.json"
    tmp = reports_dir / ".latest.json.tmp"
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, latest)  # the dashboard never reads a half-written file
    paths["latest"] = latest
    logger.info("evaluation report written to %s", out)
    return paths
