"""Where a burst of prompts spends its time to first token (session 9's question: 16 prompts
arriving together waited 0.6-0.8 s for their first token through the pipeline the first
time, 0.14-0.19 s after; 64 waited 0.3-0.5 s, a fifth of the c64 level's wall time).

A: one stage of the 7B shape (layers [0, 14), graphs up to 128 new tokens) in this process:
   eager prefill steps of the shapes a burst makes, each timed alone, first call and again,
   and a torch.profiler table of the repeated ones (which sdpa backend, which kernels).
B: the pipeline (`local`, 1 in flight, 14 | 14 on this GPU) after the benchmark's warm-up:
   bursts of 16 and 64 one-token requests started together, three of each, with the server's
   own TTFT, its step count and mean hop for each burst; and 2,000-token prompts alone.

    python -m bench.gpu.prefill_probe --out prefill.json [--dry-run]  (--dry-run: this CPU,
        the serving benchmark's small checkpoint, to check the script before device time)
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench.gpu import pipeline_load as load
from bench.gpu.decode_gpu import write_config
from bench.gpu.pipeline_gpu import (DRY, SPLIT, GpuStack, dry_checkpoint, long_prompt_ttft,
                                    write_checkpoint)
from bench.gpu.pipeline_probe import breakdown, scrape
from engine.batch import SeqChunk, StepBatch
from engine.stage import Stage

PROMPT = 32
SWEEP = (200, 300, 450, 600, 900, 1300, 1700, 170, 250, 700, 1100, 1900)  # eager, unseen


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed_step(stage: Stage, chunks: list[SeqChunk]) -> float:
    ids = torch.randint(0, 8000, (sum(c.num_tokens for c in chunks),))
    sync()
    t0 = time.perf_counter()
    stage.forward(StepBatch(tuple(chunks)), ids)
    sync()
    return (time.perf_counter() - t0) * 1e3


def fresh(tag: str, n: int, length: int = PROMPT) -> list[SeqChunk]:
    return [SeqChunk(f"{tag}{i}", 0, length) for i in range(n)]


def in_process(folder: Path, dry: bool) -> dict:
    where = dict(device="cpu", dtype="float32", kv_cache_bytes=1 << 28, cuda_graph_max_batch=0) \
        if dry else dict(device="cuda", dtype="bfloat16", kv_cache_bytes=8 << 30,
                         cuda_graph_max_batch=128)
    stage = Stage.load(folder, 0, DRY["split"] if dry else SPLIT, load_format="dummy", **where)
    out, serial = {}, iter(range(10**6))

    def run(name: str, make) -> None:
        """make(tag) -> the step's chunks; twice, each on sequences of its own, released."""
        times = []
        for _ in range(2):
            tag = f"{name}-{next(serial)}-"
            chunks = make(tag)
            times.append(timed_step(stage, chunks))
            for c in chunks:
                stage.release(c.seq_id)
        out[name] = {"first_ms": times[0], "again_ms": times[1]}
        print(name, out[name], flush=True)

    def mixed(prompts: int):
        def make(tag):  # 16 sequences decoding at position 40, `prompts` fresh ones joining
            running = fresh(tag + "d", 16, 40)
            timed_step(stage, running)
            return [SeqChunk(c.seq_id, 40, 1) for c in running] + fresh(tag + "p", prompts)
        return make

    run("prefill_64x32", lambda t: fresh(t, 64))  # what the benchmark's warm-up sends
    for n in (16, 5, 11, 3):
        run(f"prefill_{n}x32", lambda t, n=n: fresh(t, n))
    run("mixed_16dec_5x32", mixed(5))  # 176 new tokens: eager, decodes apart from prompts
    run("mixed_16dec_12x32", mixed(12))
    run("prefill_1x2000", lambda t: fresh(t, 1, 2000))
    # does every new token count pay again, or only the first few (kernels loaded once)?
    for length in SWEEP:
        run(f"prefill_1x{length}", lambda t, n=length: fresh(t, 1, n))
    out["profiles"] = {}
    if dry:
        return out
    for name, n, length in (("prefill_16x32", 16, PROMPT), ("prefill_1x2000", 1, 2000)):
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            chunks = fresh(f"prof-{name}-", n, length)
            wall = timed_step(stage, chunks)
        for c in chunks:
            stage.release(c.seq_id)
        events = prof.key_averages()
        kernels = sorted((e for e in events if e.device_type.name == "CUDA"),
                         key=lambda e: -e.self_device_time_total)
        cpu = sorted(events, key=lambda e: -e.self_cpu_time_total)
        out["profiles"][name] = {
            "wall_ms": wall,
            "device_ms": sum(e.self_device_time_total for e in kernels) / 1e3,
            "kernels": [[e.key[:100], e.count, e.self_device_time_total / 1e3] for e in kernels[:12]],
            "cpu_ops": [[e.key[:100], e.count, e.self_cpu_time_total / 1e3] for e in cpu[:12]]}
        print(name, json.dumps(out["profiles"][name])[:1500], flush=True)
    del stage
    torch.cuda.empty_cache()
    return out


def pipeline(tmp: Path, model: Path, dry: bool) -> dict:
    where = {k: DRY[k] for k in ("device", "dtype", "split")} if dry else {}
    stack = GpuStack(tmp, model, "local", 1, **where)
    out = {}
    try:
        load.warm_up(stack.url, model.name)
        for rep in range(3):
            for n in (16, 64):
                before = scrape(stack.metrics)
                ttft = load.burst(stack.url, model.name, n, 20000 + 1000 * rep + n, 1)
                b = breakdown(before, scrape(stack.metrics))
                key = f"burst_{n}"
                out.setdefault(key, []).append(
                    {"client_ttft_ms_p50": ttft[n // 2] * 1e3, "client_ttft_ms_max": ttft[-1] * 1e3,
                     **{k: b[k] for k in ("steps", "hop_ms_mean", "worker_step_ms_mean",
                                          "server_ttft_ms_mean")}})
                print(key, out[key][-1], flush=True)
        out |= long_prompt_ttft(stack, model.name)
        print("ttft 2000", out["ttft_2000_ms_p50"], out["ttft_2000_breakdown"], flush=True)
    finally:
        stack.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--dry-run", action="store_true", help="small checkpoint, this CPU")
    parser.add_argument("--in-process-only", action="store_true", help="part A only")
    args = parser.parse_args()
    dry = args.dry_run
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "device": "cpu (dry run)" if dry else torch.cuda.get_device_name(),
              "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        model = dry_checkpoint(Path(tmp)) if dry else write_config("qwen7b", Path(tmp)) \
            if args.in_process_only else write_checkpoint(Path(tmp) / "qwen7b")
        result["in_process"] = in_process(model, dry)
        Path(args.out).write_text(json.dumps(result, indent=1))
        if not args.in_process_only:
            result["pipeline"] = pipeline(Path(tmp), model, dry)
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
