"""Exports in the formats trainers read (issue 13): a user's labels as TRL preference and KTO JSONL,
their conversations, and the operator's export of everyone's labels; loaded with `datasets` and
handed to TRL's DPOTrainer and KTOTrainer, which tokenize them at construction."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.conftest import chat_turn, signup

REPO = Path(__file__).resolve().parents[2]


def _rate_and_rank(client, who: dict, question: str) -> tuple[int, int]:
    out = chat_turn(client, who["token"], question, alternatives=2, max_new_tokens=6, temperature=1.0)
    a, b = (s["message_id"] for s in out["starts"])
    if out["text"][a] == out["text"][b]:  # identical replies carry no preference; the export skips them
        pytest.skip("sampling produced two identical replies")
    assert client.post("/api/rankings", json={"message_ids": [a, b]}, headers=who["headers"]).status_code == 201
    client.post(f"/api/messages/{a}/feedback", json={"rating": "up", "reasons": ["helpful"]}, headers=who["headers"])
    client.post(f"/api/messages/{b}/feedback", json={"rating": "down"}, headers=who["headers"])
    return a, b


def _jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_user_exports_in_trl_formats_and_conversations(client, tmp_path):
    alice, bob = signup(client, "alice"), signup(client, "bob")
    a, b = _rate_and_rank(client, alice, "Name a colour.")
    _rate_and_rank(client, bob, "Name an animal.")
    # a /v1 call whose assistant turn the client wrote: context only, never a label
    client.post("/v1/chat/completions", headers=alice["headers"], json={"model": "smollm2-135m-instruct", "max_tokens": 2, "messages": [
        {"role": "user", "content": "Q"}, {"role": "assistant", "content": "client-written"}, {"role": "user", "content": "Q2"}]})

    r = client.get("/api/me/feedback/export", params={"format": "preference"}, headers=alice["headers"])
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    pref = _jsonl(r.text)
    assert len(pref) == 1 and (pref[0]["chosen_id"], pref[0]["rejected_id"]) == (a, b)
    assert pref[0]["prompt"] == [{"role": "user", "content": "Name a colour."}]
    assert pref[0]["chosen"][0]["role"] == "assistant" and pref[0]["chosen_policy"] == "base"
    kto = _jsonl(client.get("/api/me/feedback/export", params={"format": "kto"}, headers=alice["headers"]).text)
    assert sorted((row["message_id"], row["label"]) for row in kto) == [(a, True), (b, False)]
    assert all(row["user_id"] == alice["id"] for row in pref + kto)  # never bob's
    assert "client-written" not in r.text
    assert client.get("/api/me/feedback/export", params={"format": "csv"}, headers=alice["headers"]).status_code == 422
    legacy = client.get("/api/me/feedback/export", headers=alice["headers"]).json()  # the JSON document, now with the text
    assert {f["message_id"] for f in legacy["feedback"]} == {a, b} and all(f["reply"] for f in legacy["feedback"])

    convs = client.get("/api/me/export", headers=alice["headers"]).json()["conversations"]
    assert len(convs) == 2 and {m["id"] for c in convs for m in c["messages"]} >= {a, b}
    assert "Name an animal." not in json.dumps(convs)

    # loaded the way trainers load them, and taken by TRL's trainers
    from datasets import load_dataset

    (tmp_path / "pref.jsonl").write_text(r.text)
    (tmp_path / "kto.jsonl").write_text(client.get("/api/me/feedback/export", params={"format": "kto"}, headers=alice["headers"]).text)
    pref_ds = load_dataset("json", data_files=str(tmp_path / "pref.jsonl"), split="train")
    kto_ds = load_dataset("json", data_files=str(tmp_path / "kto.jsonl"), split="train")
    assert set(pref_ds.column_names) >= {"prompt", "chosen", "rejected"} and set(kto_ds.column_names) >= {"prompt", "completion", "label"}
    _trl_takes(client.app.state.settings, pref_ds, kto_ds, tmp_path)


def _trl_takes(settings, pref_ds, kto_ds, tmp_path) -> None:
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer

    from service.model_loading import load_base_model, load_tokenizer

    tokenizer = load_tokenizer(settings)
    model = load_base_model(settings)
    common = dict(report_to=[], max_steps=1, per_device_train_batch_size=1, use_cpu=True, save_strategy="no")
    dpo = DPOTrainer(model=model, args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common), train_dataset=pref_ds,
                     processing_class=tokenizer)
    assert len(dpo.train_dataset) == 1 and {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dpo.train_dataset.column_names)
    kto_args = {**common, "per_device_train_batch_size": 2}  # KTO's KL term needs batches of 2 or more
    kto = KTOTrainer(model=model, args=KTOConfig(output_dir=str(tmp_path / "kto"), **kto_args), train_dataset=kto_ds,
                     processing_class=tokenizer)
    assert len(kto.train_dataset) == 2 and any(c.endswith("_ids") for c in kto.train_dataset.column_names), kto.train_dataset


def test_operator_export_covers_approved_users_and_respects_deletion(client, tmp_path):
    alice, bob, carol = signup(client, "alice"), signup(client, "bob"), signup(client, "carol")
    _rate_and_rank(client, alice, "Name a colour.")
    _rate_and_rank(client, bob, "Name an animal.")
    _rate_and_rank(client, carol, "Name a fruit.")
    assert client.delete("/api/me/feedback", headers=bob["headers"]).status_code == 204  # bob deletes his labels
    from sqlmodel import Session

    from service.models import User

    with Session(client.app.state.db) as s:  # an operator keeps carol out of the shared pool (issue 28, M8)
        row = s.get(User, carol["id"])
        row.shared_pool_excluded = True
        s.add(row)
        s.commit()
    settings = client.app.state.settings
    env = {**os.environ, "ASSISTANT_DATA_DIR": str(settings.data_dir), "ASSISTANT_DEV_MODE": "1", "HF_HUB_OFFLINE": "1"}

    def export(*flags: str) -> tuple[list[dict], list[dict], str]:
        out = tmp_path / f"export{'-'.join(flags)}"
        done = subprocess.run([sys.executable, "-m", "service.cli", "export-feedback", "--out", str(out), *flags], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return _jsonl((out / "preference.jsonl").read_text()), _jsonl((out / "kto.jsonl").read_text()), done.stdout

    # by default, what the shared models learn from (issue 28, L5): carol's labels are left out, and it says so
    pref, kto, stdout = export()
    assert len(pref) == 1 and len(kto) == 2 and {r["user_id"] for r in pref + kto} == {alice["id"]}
    assert "preference.jsonl: 1 rows" in stdout and f"users [{carol['id']}]" in stdout
    pref, kto, _ = export("--every-label")
    assert len(pref) == 2 and len(kto) == 4 and {r["user_id"] for r in pref + kto} == {alice["id"], carol["id"]}
