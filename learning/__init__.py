"""Everything that fits weights: data building, reward and harm models, PPO, the gate, the worker.

    learning.data      feedback rows -> preference pairs, thumbs, harm labels (+ snapshot provenance)
    learning.reward    the shared preference basis, population and per-user weights with a posterior
    learning.harm      one global harm classifier; the one registry of automated harm judges
    learning.redteam   harm-inviting prompts the safety stage practises on (disjoint from evaluation)
    learning.losses    Bradley-Terry, BCE, PPO policy/value losses, GAE, RLOO baseline (hand-tested)
    learning.policy    policy = base + LoRA, reference = adapter disabled, value head, sampling
    learning.warmstart best-of-n distillation of the user's reward before PPO
    learning.ppo       PPO on one LoRA adapter (the algorithm only)
    learning.gate      evaluate base, current and candidate; promote or reject
    learning.shared    the typed hand-off from a run's shared stage to its jobs
    learning.pipeline  one training run, start to finish: the shared stage, the jobs, the loaded models
    learning.recipe    one adapter's job: setup, train, judge, publish (`AdapterRecipe`)
    learning.worker    schedule + queue worker, embedded worker, `assistant train`
    learning.config    training budgets (ASSISTANT_* variables)

Exploration (serving side, implemented by the server; documented here because training relies on
it): with probability ``ASSISTANT_EXPLORATION_SHARE`` one of a turn's alternatives comes from another
*promoted* policy than the one serving the user (user adapter -> global adapter -> base), recorded as
``Message.policy = "explore:<user|global|base>"``. Rejected or retired versions are never served.
Sibling thumbs and rankings then compare policies, which ``learning.data`` turns into pairs like any other.
"""
