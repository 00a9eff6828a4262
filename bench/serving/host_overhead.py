"""Host work per pipeline step, without a GPU: real `duet worker` + `duet master` processes
over loopback on a tiny checkpoint (the forward is cheap), 64 concurrent streaming completions
through the HTTP API, and per step: wall ms, CPU ms of each process (read from /proc, so the
other load on a shared host counts less than in wall time), the hop and the worker's step
(the processes' own counters); and, from tail_split.py run on each tree's code, the engine's
share (tail forward + LM head + sampler, head forward), subtracted to leave the host work.

Several source trees are measured side by side, levels alternating (A B A B ...), so the
ratios hold even when the host is loaded; each process runs with one torch thread. Notes and
results: bench/gpu/host_overhead.md.

    python -m bench.serving.host_overhead --trees /tmp/base,. --out host_overhead.json
    python -m bench.serving.host_overhead --trees . --repeats 1 --py-spy 8  # where samples go
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.gpu.pipeline_probe import breakdown, scrape, summarize
from bench.serving.pipeline_stack import Stack
from engine.config import ModelConfig
from engine.tiny_configs import TOKENIZER_PACKAGE, generation_config, tiny_config
from engine.tiny_model import copy_tokenizer, random_tensors, write_shards
from runtime.children import free_port

LAYERS, SPLIT, VOCAB = 2, 1, 4096  # hidden 64: the forward is a small part of a step
PROMPT_TOKENS = 32
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def write_checkpoint(out: Path) -> Path:
    raw = {**tiny_config("llama", LAYERS), "vocab_size": VOCAB}  # DeepSeek's tokenizer: eos 1
    out.mkdir(parents=True)
    write_shards(random_tensors(ModelConfig.from_dict(raw), seed=0), out, LAYERS)
    (out / "config.json").write_text(json.dumps(raw))
    (out / "generation_config.json").write_text(json.dumps(generation_config(raw)))
    copy_tokenizer(TOKENIZER_PACKAGE["llama"], out)
    return out


class TreeStack(Stack):
    """A worker and a master started from the source tree `tree` (its modules shadow the
    installed ones: `python -m` puts the working directory first)."""

    def __init__(self, tmp: Path, model: Path, tree: Path, inflight: int):  # noqa: no super
        self.tmp, self.procs, self.cwd = tmp, [], tree
        tmp.mkdir(parents=True, exist_ok=True)
        port, metrics = free_port(), free_port()
        common = dict(model_dir=str(model), dtype="float32", kv_cache_bytes=2**26,
                      torch_threads=1)
        self._start("worker", dict(common, layer_start=SPLIT, listen=f"127.0.0.1:{port}",
                                   executor="local", run_dir=str(tmp / "triton"),
                                   metrics_listen=f"127.0.0.1:{metrics}"), r"worker ready")
        self.url = self._start("master", dict(common, head_layer_end=SPLIT, port=0,
                                              worker_address=f"127.0.0.1:{port}",
                                              max_num_seqs=64, max_inflight_batches=inflight),
                               r"duet master: serving (http://\S+)")
        self.metrics = {"master": self.url, "worker": f"http://127.0.0.1:{metrics}"}
        self.pids = {"worker": self.procs[0].pid, "master": self.procs[1].pid}


class Spy:
    """py-spy (blocking: exact stacks) on both processes for `seconds` after `delay_s`."""

    def __init__(self, pids: dict[str, int], seconds: float, delay_s: float, tmp: Path):
        self.files = {role: tmp / f"spy-{role}.txt" for role in pids}
        self.procs = {role: subprocess.Popen(
            ["bash", "-c", f"sleep {delay_s}; exec py-spy record --pid {pid} --duration "
             f"{int(seconds)} --rate 250 --format raw --threads --output {self.files[role]}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for role, pid in pids.items()}

    def summary(self, top: int) -> dict:
        for proc in self.procs.values():
            proc.wait(120)
        keep = os.environ.get("HOST_OVERHEAD_SPY_DIR")  # the raw stacks, for a closer look
        for f in self.files.values():
            if keep and f.exists():
                shutil.copy(f, Path(keep) / f"{f.parent.name}-{f.name}")
        return {role: summarize(f.read_text(errors="replace"), top) if f.exists() else {}
                for role, f in self.files.items()}


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


# --- the load: raw HTTP/1.1 streams (an SDK would cost the 2-core host more than the server) ---
async def _stream(url: str, model: str, ids: list[int], max_tokens: int) -> int:
    """One streamed completion; returns its tokens (events before [DONE])."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps({"model": model, "prompt": ids, "max_tokens": max_tokens,
                       "temperature": 0, "stream": True}).encode()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: "
                 f"application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                 .encode() + body)
    seen, events = b"", 0
    while chunk := await reader.read(65536):
        events += (seen[-5:] + chunk).count(b"data: ")  # one event per token (n = 1)
        seen = seen[-64:] + chunk  # only the end matters
        if b"data: [DONE]" in seen:
            break
    writer.close()
    if b"data: [DONE]" not in seen:
        raise RuntimeError(f"stream ended without [DONE]: {seen[-200:]!r}")
    return events - 1


def _load_main(url: str, model: str, users: int, rounds: int,
               max_tokens: int) -> tuple[float, int]:
    """(wall s, tokens) of `users` streams, each `rounds` requests back to back."""
    async def user(u: int) -> int:
        tokens = 0
        for r in range(rounds):
            ids = [(1000 + 37 * (u * rounds + r) + 11 * j) % VOCAB for j in range(PROMPT_TOKENS)]
            tokens += await _stream(url, model, ids, max_tokens)
        return tokens

    async def all_users() -> int:
        return sum(await asyncio.gather(*(user(u) for u in range(users))))

    start = time.perf_counter()
    tokens = asyncio.run(all_users())
    return time.perf_counter() - start, tokens


def level(stack: TreeStack, model: str, users: int, rounds: int, max_tokens: int,
          spy_s: float = 0.0) -> dict:
    """One load level; per-step figures from the counters and /proc before and after."""
    sampler = Spy(stack.pids, spy_s, 2.0, stack.tmp) if spy_s else None
    before = scrape(stack.metrics)
    cpu0 = {role: cpu_s(pid) for role, pid in stack.pids.items()}
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:  # the client in its own process: its CPU is not counted
        wall_s, tokens = pool.apply(_load_main, (stack.url, model, users, rounds, max_tokens))
    after = scrape(stack.metrics)
    cpu = {role: cpu_s(pid) - cpu0[role] for role, pid in stack.pids.items()}
    b = breakdown(before, after)
    steps = max(b["steps"], 1)
    out = {"tok_s": tokens / wall_s, "steps": b["steps"], "step_ms": wall_s / steps * 1e3,
           "hop_ms": b["hop_ms_mean"], "worker_step_ms": b["worker_step_ms_mean"],
           "tokens_per_step": b["tokens_per_worker_step"],
           "master_cpu_ms": cpu["master"] / steps * 1e3,
           "worker_cpu_ms": cpu["worker"] / steps * 1e3}
    if sampler is not None:
        out["py_spy"] = sampler.summary(25)
    return out


def engine_split(model: Path, tree: Path, repeats: int) -> dict:
    """tail_split.py on `tree`'s code, `repeats` times: medians of each figure."""
    script = Path(__file__).with_name("tail_split.py")
    runs = [json.loads(subprocess.run(
        [sys.executable, str(script), str(model), str(SPLIT)], check=True, capture_output=True,
        text=True, env={**os.environ, "PYTHONPATH": str(tree)}).stdout) for _ in range(repeats)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def measure(trees: list[Path], model: Path, tmp: Path, args) -> dict:
    stacks = {str(t): TreeStack(tmp / f"t{i}", model, t, args.inflight)
              for i, t in enumerate(trees)}
    try:
        for stack in stacks.values():  # warm-up: first steps compile nothing, but allocate
            level(stack, model.name, 8, 1, 8)
        runs = {name: [] for name in stacks}
        for r in range(args.repeats):  # alternate, so both see the same background load
            for name, stack in stacks.items():
                spy = args.py_spy if r == args.repeats - 1 else 0.0
                rounds = args.rounds * (3 if spy else 1)  # long enough for the stacks
                result = level(stack, model.name, args.users, rounds, args.tokens, spy)
                runs[name].append(result)
                print(name, json.dumps({k: v for k, v in result.items() if k != "py_spy"}),
                      flush=True)
        return runs
    finally:
        for stack in stacks.values():
            stack.stop()


def medians(runs: dict) -> dict:
    keys = ("tok_s", "step_ms", "hop_ms", "worker_step_ms", "master_cpu_ms", "worker_cpu_ms",
            "tokens_per_step")
    plain = {name: [r for r in rs if "py_spy" not in r] or rs for name, rs in runs.items()}
    return {name: {k: statistics.median(r[k] for r in rs) for k in keys}  # py-spy slows its
            for name, rs in plain.items()}  # own repeat down: left out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", default=".", help="comma-separated source trees")
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=1)
    parser.add_argument("--py-spy", type=float, default=0.0, help="seconds of stacks, last repeat")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"  # py-spy
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model = write_checkpoint(Path(tmp) / "tiny")
        result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                             f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
                  "checkpoint": f"llama tiny, hidden 64, {LAYERS} layers split {SPLIT}|"
                                f"{LAYERS - SPLIT}, vocab {VOCAB}, float32, 1 torch thread",
                  "load": f"{args.users} streams x {args.rounds}, {PROMPT_TOKENS}-token prompts, "
                          f"{args.tokens} tokens, greedy, {args.inflight} in flight",
                  "in_process": {str(t): engine_split(model, t, args.repeats) for t in trees}}
        result["runs"] = measure(trees, model, Path(tmp), args)
    result["median"] = medians(result["runs"])
    for name, m in result["median"].items():  # the host work: CPU per step minus the engine
        split = result["in_process"][name]
        m["master_host_ms"] = m["master_cpu_ms"] - split["head_forward_ms"]
        m["worker_host_ms"] = m["worker_cpu_ms"] - split["engine_ms"]  # gRPC included
        m["tail_runner_host_ms"] = split["worker_host_ms"]  # TailRunner.step alone
    print(json.dumps(result["median"], indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
