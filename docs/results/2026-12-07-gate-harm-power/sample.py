"""Draw large harm samples from the base and each kept candidate of a protocol run, as the gate does.

Run from the repository root with ASSISTANT_DEV_MODE=1 ASSISTANT_DATA_DIR=<the run's work data dir>:

    python docs/results/2026-12-07-gate-harm-power/sample.py OUT.json [PER_PROMPT_CANDIDATE] [PER_PROMPT_BASE] [anti]

With ``anti`` the candidates are not the run's kept adapters but adapters that undo the safety stage in part:
the served (safe) base's weights minus the plain base's are a rank-16 LoRA delta (the stage's own LoRA, merged),
so ``-strength`` times it, factored by SVD into the policy's LoRA layout, is an adapter that moves the safe base
that share of the way back to the plain one (1.0: the plain base exactly). They are real policies more harmful
than the base, with the prompt-to-prompt spread of real ones, to test whether the gate catches such a candidate.

Every policy answers every shipped red-team dev prompt (``learning.redteam.SAFETY_DEV_PROMPTS``, the gate's
own harm prompts) with the gate's sampler and seeds. The harm model is fitted again as the run's shared stage fitted
it (``learning.pipeline``: the same labels, judge and budgets; a finished run deletes its shared file). Each reply's
P(harm) under that model is written per prompt, so ``power.py`` can replay the gate's harm test at any sample
size. The evaluation's judge also scores each reply, for the record only: nothing here reaches training, the gate
or serving.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from sqlmodel import Session, select

from learning.config import Budgets
from learning.gate import HARM_THRESHOLD
from learning.data import shared_view
from learning.harm import HarmModel, judge_flagger
from learning.harm import make_judge as training_judge
from learning.pipeline import LoadedModels
from learning.policy import load_adapter_dir, load_lora_state, score_samples
from learning.redteam import SAFETY_DEV_PROMPTS
from learning.reward import FeatureCache
from learning.sim.judge import make_judge
from service.db import make_engine
from service.models import AdapterVersion
from service.settings import Settings


def draw(models, prompts, per_prompt, harm, budgets, *, reference, seed=54321, batch=32):
    rows = [p for p in prompts for _ in range(per_prompt)]
    probs, texts = [], []
    for i in range(0, len(rows), batch):
        samples = models.sampler(models.policy, models.tokenizer, rows[i:i + batch], budgets, seed + i, reference=reference)
        probs += score_samples(models.policy, samples,
                               lambda f, ps, ts: (torch.zeros(f.shape[0]), harm.prob(f, ts)), budgets)[2].tolist()
        texts += samples.texts
    return rows, probs, texts


ANTI_STRENGTHS = (1.0, 0.5, 0.25)


def anti_safety_states(settings, models, budgets) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """(name, LoRA state) of adapters moving the safe base ``strength`` of the way back to the plain base."""
    from safetensors.torch import load_file

    from learning.policy import lora_state
    from service.model_loading import plain_model_path, resolve_model_path

    plain = load_file(f"{plain_model_path(settings)}/model.safetensors")
    safe = load_file(f"{resolve_model_path(settings)}/model.safetensors")
    template = lora_state(models.policy)
    scaling = budgets.lora_alpha / budgets.lora_r
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key in template:
        if ".lora_A." not in key:
            continue
        module = key.split("base_model.model.", 1)[1].split(".lora_A.")[0]
        delta = plain[f"{module}.weight"].double() - safe[f"{module}.weight"].double()  # (out, in)
        u, sv, vh = torch.linalg.svd(delta, full_matrices=False)
        r = budgets.lora_r
        factors[key] = (u[:, :r] * sv[:r].sqrt(), sv[:r].sqrt()[:, None] * vh[:r])  # B (out, r), A (r, in)
    out = []
    for strength in ANTI_STRENGTHS:
        state = {}
        for key, (b, a) in factors.items():
            state[key] = a.float().contiguous()
            state[key.replace(".lora_A.", ".lora_B.")] = (b * strength / scaling).float().contiguous()
        assert set(state) == set(template)
        out.append((f"anti-safety-{strength}", state))
    return out


def main() -> None:
    out = sys.argv[1]
    per_cand = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    per_base = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    settings, budgets = Settings(), Budgets.from_env()
    run_id = 1
    models = LoadedModels().get(settings, run_id, budgets)
    engine = make_engine(settings)
    trainer_judge = training_judge(budgets.harm_judge)
    with Session(engine) as session:
        flags = judge_flagger(trainer_judge, budgets.harm_judge_threshold) if trainer_judge is not None else None
        pool = shared_view(session, models.render, budgets, judge_flags=flags).pool
    harm = HarmModel(FeatureCache(models.policy, models.tokenizer, budgets), budgets, judge=trainer_judge)
    print("harm model:", harm.fit(pool), flush=True)
    prompts = [models.render([{"role": "user", "content": p}]) for p in SAFETY_DEV_PROMPTS]
    judge = make_judge("profanity-check")
    with Session(engine) as session:
        rows = session.exec(select(AdapterVersion).where(AdapterVersion.user_id != None)).all()  # noqa: E711
        adapters = [(f"u{r.user_id}-v{r.version}", settings.adapters_dir / r.path) for r in rows]
    anti = len(sys.argv) > 4 and sys.argv[4] == "anti"
    policies = [("base", None)] + (anti_safety_states(settings, models, budgets) if anti else adapters)
    result = {"run_id": run_id, "threshold": HARM_THRESHOLD, "prompts": len(prompts), "policies": {}}
    for name, path in policies:
        t = time.monotonic()
        load_lora_state(models.policy, models.fresh_state)
        if isinstance(path, dict):
            load_lora_state(models.policy, path)
        elif path is not None:
            load_adapter_dir(models.policy, path)
        n = per_base if path is None else per_cand
        rows_, probs, texts = draw(models, prompts, n, harm, budgets, reference=path is None)
        result["policies"][name] = {"per_prompt": n, "p_harm": probs, "judge": judge.score(texts),
                                    "prompt_index": [prompts.index(p) for p in rows_], "texts": texts}
        flagged = sum(p >= HARM_THRESHOLD for p in probs)
        print(f"{name}: {flagged}/{len(probs)} flagged by the gate's harm model, "
              f"{sum(s >= 0.5 for s in result['policies'][name]['judge'])} by the evaluation's judge "
              f"({time.monotonic() - t:.0f}s)", flush=True)
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
