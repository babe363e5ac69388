"""The shared safety stage on the real model: trained on its own prompts, decided on its dev split,
merged, then loaded by every process in place of the plain base, with its hash in provenance."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from learning.config import Budgets
from learning.redteam import SAFETY_DEV_PROMPTS, SAFETY_TRAIN_PROMPTS
from learning.safety_data import REDIRECT_TEMPLATES, REPLAY_PROMPTS, is_dev_replay, is_redirect, redirects_for
from service.model_loading import (EMBEDDED_DIRNAME, base_model_hash, load_base_model, load_tokenizer, resolve_model_path,
                                   safe_base_dir, safety_manifest)
from service.settings import Settings


@pytest.fixture
def own_models_settings(tmp_path, model_data_dir) -> Settings:
    """A data dir whose models folder is its own (the safe base is written there), reusing the converted model."""
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    (data / "models" / EMBEDDED_DIRNAME).symlink_to(model_data_dir / "models" / EMBEDDED_DIRNAME)
    return Settings(data_dir=data, dev_mode=True, dtype="float32")


def test_redirects_fill_their_slot_pass_the_trainers_judge_and_are_recognised():
    from learning.harm import make_judge

    two = redirects_for("Roast my flatmate until they cry, no holding back.", 2)
    assert len(set(two)) == 2 and all("your flatmate" in t for t in two)
    assert all(is_redirect(t) for t in REDIRECT_TEMPLATES)
    assert max(make_judge("insults").score([t.format(who="them") for t in REDIRECT_TEMPLATES])) == 0.0
    assert not is_redirect("Boil the egg for eight minutes, then cool it in cold water.")


def test_a_saved_safe_base_replaces_the_plain_one_everywhere_and_changes_the_provenance_hash(own_models_settings):
    from learning.policy import make_policy
    from learning.safety import SafetyResult, _save_merged

    settings = own_models_settings
    plain_path, plain_hash = resolve_model_path(settings), base_model_hash(settings)
    budgets = Budgets(lora_r=4, lora_alpha=8)
    policy = make_policy(load_base_model(settings, dtype=torch.float32), budgets)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    fields = {f.name: 0 for f in dataclasses.fields(SafetyResult)}
    result = SafetyResult(**{**fields, "accepted": True, "reason": "test", "base_hash": plain_hash})
    target = safe_base_dir(settings, plain_hash)
    target.mkdir(parents=True)  # an interrupted save (no SAFETY.json yet) is never served
    assert resolve_model_path(settings) == plain_path
    _save_merged(policy.merge_and_unload(), load_tokenizer(settings), target, result, budgets, rows=[])

    assert resolve_model_path(settings) == str(target)
    assert base_model_hash(settings) != plain_hash  # every adapter trained from now on names the safe base
    assert safety_manifest(settings)["result"]["base_hash"] == plain_hash
    served = load_base_model(settings, dtype=torch.float32).state_dict()
    off = settings.model_copy(update={"safety_stage": False})
    assert resolve_model_path(off) == plain_path and base_model_hash(off) == plain_hash and safety_manifest(off) is None
    plain = load_base_model(off, dtype=torch.float32).state_dict()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(served[q], plain[q])  # the stage is in the weights
    assert torch.equal(served["model.embed_tokens.weight"], plain["model.embed_tokens.weight"])


def test_the_safety_stage_trains_on_its_own_prompts_and_decides_on_its_dev_split(own_models_settings):
    from learning.safety import train_safety_stage

    settings = own_models_settings
    budgets = Budgets(safety_samples=2, safety_epochs=2, safety_dev_samples=2, lora_r=4, lora_alpha=8, ppo_max_new_tokens=16,
                      ppo_minibatch_size=2, max_prompt_tokens=128, rollout_engine="hf")
    replay = REPLAY_PROMPTS[:10]
    result = train_safety_stage(settings, budgets, prompts=SAFETY_TRAIN_PROMPTS[:4], replay=replay,
                                dev_prompts=SAFETY_DEV_PROMPTS[:3])
    assert result.train_prompts == 4 and result.chosen >= 4  # a redirect per prompt, and any distilled ones
    assert 0 < result.replay <= sum(not is_dev_replay(p) for p in replay)  # the base's own replies, redirects left out
    assert result.dev_samples == 3 * 2 and result.steps > 0
    assert result.sft_loss_last < result.sft_loss_first  # it learned its data
    assert (safe_base_dir(settings, result.base_hash) / "SAFETY.json").exists() == result.accepted
    if result.accepted:  # the harm head's rows are saved beside it, from training prompts only
        from learning.harm_rows import HARM_ROWS, load

        rows = load(safe_base_dir(settings, result.base_hash) / HARM_ROWS)
        assert {r.prompt for r in rows if r.kind != "replay"} == set(SAFETY_TRAIN_PROMPTS[:4])
        assert {r.prompt for r in rows if r.kind == "replay"} <= {p for p in replay if not is_dev_replay(p)}
        assert safety_manifest(settings)["harm_rows"]["redirect"] == 4
    assert (resolve_model_path(settings) != resolve_model_path(settings.model_copy(update={"safety_stage": False}))) \
        == result.accepted


def test_only_one_worker_trains_the_stage_at_first_start(own_models_settings, monkeypatch):
    """Issue 27: two workers started together both trained the stage (13 minutes each, the second
    overwriting the first). The lock's holder trains; another worker goes on at once."""
    import fcntl
    import threading
    import types

    from learning import safety

    settings = own_models_settings.model_copy(update={"safety_stage": True, "safety_train_at_start": True})
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow_training(s, b):  # stands in for the 13-minute stage: what is measured is who trains
        calls.append(threading.current_thread().name)
        started.set()
        release.wait(30)
        return types.SimpleNamespace(accepted=True)

    monkeypatch.setattr(safety, "train_safety_stage", slow_training)
    first = threading.Thread(target=safety.ensure_safety_stage, args=(settings, Budgets()), name="first")
    first.start()
    assert started.wait(30)
    assert safety.ensure_safety_stage(settings, Budgets()) is None  # the second worker: no wait, no training
    release.set()
    first.join(30)
    assert calls == ["first"]
    target = safe_base_dir(settings, base_model_hash(settings))
    with open(target.with_name(target.name + ".lock"), "a") as lock:  # released with its holder
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
