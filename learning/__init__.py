"""Everything that fits weights: data building, reward and harm models, PPO, the gate, the worker.

    learning.data      feedback rows -> preference pairs, thumbs, harm labels (+ snapshot provenance)
    learning.reward    frozen-backbone features + global / per-user scalar reward heads
    learning.harm      one global harm classifier, pluggable automated judges
    learning.losses    Bradley-Terry, BCE, PPO policy/value losses, GAE (hand-tested)
    learning.ppo       PPO on one LoRA adapter, reference = adapter disabled
    learning.gate      promote / reject a candidate adapter
    learning.pipeline  one training run, start to finish; crash recovery
    learning.worker    schedule + queue worker, embedded worker, `assistant train`
    learning.config    training budgets (ASSISTANT_* variables)

Exploration (serving side, implemented by the server; documented here because training relies on
it): with probability ``ASSISTANT_EXPLORATION_SHARE`` one of a turn's alternatives comes from another
*promoted* policy than the one serving the user (user adapter -> global adapter -> base), recorded as
``Message.policy = "explore:<user|global|base>"``. Rejected or retired versions are never served.
Sibling thumbs and rankings then compare policies, which ``learning.data`` turns into pairs like any other.
"""
