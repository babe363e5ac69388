"""Simulated users and evaluation: does the learning loop personalise and reduce harm?

- ``profiles``: hidden preference functions over (prompt, reply) and rating behaviour.
- ``client``: the public HTTP/WebSocket contract, nothing else (works against any deployment).
- ``judge``: picks the simulation's harm judge from ``learning.harm``'s registry
  (alt-profanity-check by default, a labelled word-list fallback).
- ``simulate``: ``assistant simulate`` — users chat, rate, rank; the operator triggers training.
- ``evaluate``: ``assistant evaluate`` — in-process, next to the data dir: win rates, harm,
  refusals, reward-model accuracy, KL; with ``stats`` (win rates and intervals), ``policies``
  (the base model and stored adapters, generation, KL) and ``history`` (what training recorded).
- ``reward_curve``: ``assistant reward-curve`` — the reward model's accuracy against label counts.
- ``report``: JSON, Markdown and PNG plots under ``<data_dir>/reports/``.
- ``prompts``: the disjoint prompt sets.

Importing this package loads no model.
"""
