"""``assistant bench serve --api``: the 16-user scenario through a real server's routes.

Starts ``assistant serve --no-worker`` on a free loopback port with a fresh data dir
(dev mode, open registration, the same model files), registers ``users`` accounts,
then has all of them ask at once, first over ``/v1/chat/completions`` (streamed,
with ``stream_options.include_usage``), then over the WebSocket ``/api/chat``. So
sign-in, the database, prompt rendering, the engine and streaming are all in the
numbers. Every request is greedy with the same token budget; a request that fails
counts in ``failures`` (the target is none).

``--best-of-n N`` (issue 26) runs the scenarios twice, on two fresh servers whose users are each
served their own random adapter with a stored reward: personal best-of-n off, then
``ASSISTANT_BEST_OF_N=N``. It reports the ratios of one user's first-token time and of the
16 users' tokens/s, and the share of replies that got n > 1 (the server draws one candidate when
the engine lacks idle rows). Requests sample at ``BEST_OF_TEMPERATURE`` on both servers (a greedy
request gets one candidate: there is nothing to choose among), so replies may end early and
token counts differ between runs; tokens/s is the comparable figure.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from service.bench_common import pct
from service.local_process import free_port, stop, wait_for_http
from service.settings import Settings

BEST_OF_TEMPERATURE = 0.7  # the server's default temperature

QUESTIONS = [
    "Write a short poem about the sea.", "Explain what a hash table is.", "Give me three tips for learning a new language.",
    "What is the capital of France and why is it famous?", "Describe a sunset in two sentences.", "How do plants make food?",
    "Tell me a joke about computers.", "Summarize the plot of Romeo and Juliet.",
]


def _start_server(settings: Settings, data_dir: Path, port: int, log: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    from service.model_loading import resolve_model_path

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ASSISTANT_DEV_MODE": "1", "ASSISTANT_DATA_DIR": str(data_dir),
           "ASSISTANT_MODEL": str(resolve_model_path(settings)), "ASSISTANT_REGISTRATION": "open",
           "ASSISTANT_DEFAULT_TEMPERATURE": "0", "ASSISTANT_DTYPE": settings.dtype, **(extra_env or {})}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--no-worker", "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    why = wait_for_http(proc, f"http://127.0.0.1:{port}/healthz", polls=600, interval_s=0.5)
    if why is None:
        return proc
    proc.kill()
    raise RuntimeError(f"the server did not start: {why}; see {log}")


async def _v1_request(client, base: str, token: str, question: str, max_tokens: int, temperature: float = 0.0) -> dict:
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": temperature, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    first, times, tokens = None, [], 0
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}) as r:
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if any(c.get("delta", {}).get("content") for c in chunk.get("choices", [])):
                now = time.perf_counter()
                first = first or now
                times.append(now)
    return {"ttft": (first or time.perf_counter()) - t0, "tokens": tokens, "times": times, "end": time.perf_counter()}


async def _ws_request(base: str, token: str, question: str, max_tokens: int, temperature: float = 0.0) -> dict:
    import websockets
    from websockets.typing import Origin

    t0 = time.perf_counter()
    first, times = None, []
    async with websockets.connect(base.replace("http", "ws") + "/api/chat", origin=Origin(base)) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token}))
        if json.loads(await ws.recv())["type"] != "ready":
            return {"error": "no ready frame"}
        await ws.send(json.dumps({"type": "chat", "content": question, "max_new_tokens": max_tokens, "temperature": temperature}))
        while True:
            f = json.loads(await ws.recv())
            if f["type"] == "error":
                return {"error": f.get("code", "error")}
            if f["type"] == "token":
                now = time.perf_counter()
                first = first or now
                times.append(now)
            elif f["type"] == "end":
                return {"ttft": (first or time.perf_counter()) - t0, "tokens": f["usage"]["completion_tokens"], "times": times,
                        "end": time.perf_counter()}


def _summary(results: list[dict], t0: float) -> dict:
    ok = [r for r in results if "error" not in r]
    wall = max((r["end"] for r in ok), default=t0) - t0
    tokens = sum(r["tokens"] for r in ok)
    itl = [b - a for r in ok for a, b in zip(r["times"], r["times"][1:])]
    return {"requests": len(results), "failures": len(results) - len(ok), "errors": sorted({r["error"] for r in results if "error" in r}),
            "tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 2) if wall > 0 else 0.0,
            "ttft_p50_s": round(pct([r["ttft"] for r in ok], 50), 4), "ttft_p95_s": round(pct([r["ttft"] for r in ok], 95), 4),
            "itl_p95_s": round(pct(itl, 95), 4)}


async def _scenarios(base: str, users: int, max_tokens: int, repeats: int, prepare=None, temperature: float = 0.0) -> dict:
    """``prepare(user_ids)``: called once the users exist, before any request (best-of-n gives each an adapter)."""
    import httpx

    out: dict = {}
    async with httpx.AsyncClient(timeout=600) as client:
        tokens, ids = [], []
        for i in range(users):
            name, pw = f"bench{i}", "bench-password-1"
            r = await client.post(f"{base}/api/auth/register", json={"username": name, "password": pw})
            if r.status_code not in (201, 409):
                raise RuntimeError(f"could not register {name}: {r.status_code} {r.text}")
            r = await client.post(f"{base}/api/auth/token", data={"username": name, "password": pw})
            tokens.append(r.json()["access_token"])
            ids.append((await client.get(f"{base}/api/me", headers={"Authorization": f"Bearer {tokens[-1]}"})).json()["id"])
        if prepare is not None:
            prepare(ids)
        await _v1_request(client, base, tokens[0], QUESTIONS[0], 4)  # warm-up
        for rep in range(repeats):
            # a new question per run (a numbered one): a user's repeated question would be served from
            # their prefix cache, which is real but not this scenario
            ask = lambda i, kind: f"Question {rep}-{kind}: {QUESTIONS[i % len(QUESTIONS)]}"  # noqa: E731
            for name, run in (
                ("api_v1_1_user", lambda: [_v1_request(client, base, tokens[0], ask(0, "one"), max_tokens, temperature)]),
                ("api_v1_users", lambda: [_v1_request(client, base, t, ask(i, "v1"), max_tokens, temperature)
                                          for i, t in enumerate(tokens)]),
                ("api_ws_users", lambda: [_ws_request(base, t, ask(i, "ws"), max_tokens, temperature) for i, t in enumerate(tokens)]),
            ):
                t0 = time.perf_counter()
                s = _summary(await asyncio.gather(*run()), t0)
                if name not in out or s["tokens_per_s"] > out[name]["tokens_per_s"]:
                    out[name] = s
    return out


def _serve(settings: Settings, tmp: Path, users: int, max_new_tokens: int, repeats: int, *,
           extra_env: dict[str, str] | None = None, prepare=None, temperature: float = 0.0) -> dict:
    """One fresh server in ``tmp``: the scenarios, its engine's report and its /metrics text."""
    import httpx

    port = free_port()
    proc = _start_server(settings, tmp / "data", port, tmp / "server.log", extra_env)
    try:
        result = asyncio.run(_scenarios(f"http://127.0.0.1:{port}", users, max_new_tokens, repeats,
                                        None if prepare is None else lambda ids: prepare(tmp / "data", ids), temperature))
        result["server_engine"] = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).json().get("engine")
        result["metrics_text"] = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        stop(proc, timeout_s=30)
    return result


def _adapters_with_rewards(settings: Settings, root: Path, users: int) -> list[Path]:
    """``users`` random rank-8 adapters, each with a stored reward (a preference for longer replies)."""
    import torch

    from service import traits as T
    from service.bench_common import make_random_adapter
    from service.model_loading import load_base_model
    from service.reply_reward import Preference, ReplyReward

    model = load_base_model(settings)
    d = len(T.NAMES)
    w = torch.zeros(d)
    w[T.NAMES.index("length")] = 1.0
    pref = Preference(w, torch.eye(d) * 0.01, 0.0, torch.zeros(d), 1.0, 50)
    paths = []
    for i in range(users):
        path = make_random_adapter(model, root / f"a{i}", seed=100 + i, r=8)
        ReplyReward(torch.zeros(d), torch.ones(d), pref, pref, k=1.0).save(path)
        paths.append(path)
    return paths


def _give_adapters(settings: Settings, adapters: list[Path]):
    """``prepare`` for ``_scenarios``: publish and activate one adapter per user in the server's store."""
    def prepare(data_dir: Path, user_ids: list[int]) -> None:
        from sqlmodel import Session

        from service import adapter_store
        from service.db import make_engine
        from service.models import AdapterStatus

        server_settings = Settings(data_dir=data_dir, dev_mode=True, model=settings.model)
        db = make_engine(server_settings)
        with Session(db) as s:
            for uid, src in zip(user_ids, adapters):
                row = adapter_store.publish(server_settings, s, user_id=uid, src_dir=src, metadata={},
                                            status=AdapterStatus.promoted)
                adapter_store.activate(s, user_id=uid, version_id=row.id)
        db.dispose()

    return prepare


def _best_of_counts(metrics_text: str) -> dict[str, float]:
    """``assistant_best_of_replies_total`` by n, from a /metrics page."""
    out = {}
    for line in metrics_text.splitlines():
        if line.startswith("assistant_best_of_replies_total{"):
            n = line.split('n="', 1)[1].split('"', 1)[0]
            out[n] = float(line.rsplit(" ", 1)[1])
    return out


def run_api_bench(settings: Settings, *, users: int = 16, max_new_tokens: int = 64, repeats: int = 2,
                  best_of_n: int = 1, best_of_block: int = 16, best_of_first_block: int = 0) -> dict:
    """Serve ``users`` simultaneous users through a real server; returns the numbers and ratios.
    ``best_of_n`` > 1: the best-of-n comparison instead (see the module's docstring)."""
    if best_of_n > 1:
        return _run_best_of_bench(settings, users=users, max_new_tokens=max_new_tokens, repeats=repeats, n=best_of_n,
                                  block=best_of_block, first_block=best_of_first_block)
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        result = _serve(settings, Path(tmp), users, max_new_tokens, repeats)
        result.pop("metrics_text")
    one, many = result["api_v1_1_user"], result["api_v1_users"]
    result["ratios"] = {
        "api_v1_users_vs_1_user_tokens_per_s": round(many["tokens_per_s"] / one["tokens_per_s"], 2),
        "api_v1_ttft_p95_vs_1_user": round(many["ttft_p95_s"] / one["ttft_p50_s"], 2),
        "api_ws_users_vs_1_user_tokens_per_s": round(result["api_ws_users"]["tokens_per_s"] / one["tokens_per_s"], 2),
    }
    return result


def _run_best_of_bench(settings: Settings, *, users: int, max_new_tokens: int, repeats: int, n: int, block: int,
                       first_block: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-best-of-") as tmp:
        adapters = _adapters_with_rewards(settings, Path(tmp) / "adapters", users)
        runs = {}
        on_env = {"ASSISTANT_BEST_OF_N": str(n), "ASSISTANT_BEST_OF_N_BLOCK": str(block),
                  "ASSISTANT_BEST_OF_N_FIRST_BLOCK": str(first_block)}
        for name, env in (("off", {"ASSISTANT_BEST_OF_N": "1"}), (f"best_of_{n}", on_env)):
            (Path(tmp) / name).mkdir()
            runs[name] = _serve(settings, Path(tmp) / name, users, max_new_tokens, repeats, extra_env=env,
                                prepare=_give_adapters(settings, adapters), temperature=BEST_OF_TEMPERATURE)
    off, on = runs["off"], runs[f"best_of_{n}"]
    counts = _best_of_counts(on.pop("metrics_text"))
    off.pop("metrics_text")
    chosen = sum(v for k, v in counts.items() if k != "1")
    result = {"best_of_n": n, "best_of_block": block, "best_of_first_block": first_block, "off": off, "on": on, "replies_by_n": counts,
              "share_with_n_above_1": round(chosen / sum(counts.values()), 3) if counts else None}
    result["ratios"] = {
        "ttft_1_user_on_vs_off": round(on["api_v1_1_user"]["ttft_p50_s"] / off["api_v1_1_user"]["ttft_p50_s"], 2),
        "tokens_per_s_1_user_on_vs_off": round(on["api_v1_1_user"]["tokens_per_s"] / off["api_v1_1_user"]["tokens_per_s"], 2),
        "tokens_per_s_users_on_vs_off": round(on["api_v1_users"]["tokens_per_s"] / off["api_v1_users"]["tokens_per_s"], 2),
        "ttft_p95_users_on_vs_off": round(on["api_v1_users"]["ttft_p95_s"] / off["api_v1_users"]["ttft_p95_s"], 2),
    }
    return result
