"""Serving benchmark: a worker and a master on this machine, driven by the async openai client.

Measures, in one run and on one checkpoint:
  * the engine in one process (a Stage over all layers, a greedy loop) at batch 1;
  * the two-process pipeline (worker + master over gRPC, the HTTP API on top) at
    concurrency 1, 4, 16 and 64: TTFT, inter-token latency, output tokens/s (p50, p99);
and writes bench/serving/results.md with the ratios against the issue's targets:
  aggregate output tokens/s at c16 >= 6x c1; pipeline c1 >= 0.85x the in-process engine.

The checkpoint is qwen2-shaped with random weights (hidden 1024, 8 layers, 8k vocabulary:
107 M parameters, 215 MB in bf16 on disk and in memory), big enough that compute, not
Python, dominates a step. Its tokenizer is cut to those 8k ids (pipeline_stack.py), and the
special tokens' LM-head rows are zero, so every greedy request runs to max_tokens. The c1 comparison alternates in-process and pipeline
requests, so both see the same machine load.

    python bench/serving/serve_bench.py [--out bench/serving/results.md]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import openai
import torch

from pipeline_stack import (DTYPE, LAYERS, OUTPUT_TOKENS, PROMPT_TOKENS, SHAPE, SPLIT,
                            InProcess, Stack, prompt, write_checkpoint)

HERE = Path(__file__).parent
LEVELS = (1, 4, 16, 64)


async def compare_c1(engine: InProcess, url: str, name: str, pairs: int) -> dict:
    """Alternate one in-process request and one pipeline request, `pairs` times."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    engine.request(20_000)  # warm-up
    await one_request(client, name, 20_000)
    local, piped = [], []
    for i in range(pairs):
        local.append(engine.request(20_001 + i))
        piped.append(await one_request(client, name, 20_001 + i))
    await client.close()
    med = lambda rs, key: statistics.median(r[key] for r in rs)  # noqa: E731
    return {"pairs": pairs, "local_tok_s": med(local, "tok_s"), "local_ttft_s": med(local, "ttft_s"),
            "pipe_tok_s": med(piped, "tok_s"), "pipe_ttft_s": med(piped, "ttft_s")}


async def one_request(client, name: str, i: int) -> dict:
    start = time.perf_counter()
    stamps, tokens = [], 0
    stream = await client.completions.create(
        model=name, prompt=prompt(i), max_tokens=OUTPUT_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices:
            stamps.append(time.perf_counter())
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"ttft_s": stamps[0] - start, "gaps_s": gaps, "tokens": tokens,
            "tok_s": (tokens - 1) / (stamps[-1] - stamps[0]), "end": stamps[-1]}


async def level_run(client, name: str, concurrency: int, rounds: int) -> tuple[list, float]:
    """`concurrency` users, each sending `rounds` requests back to back: results, wall time."""
    async def user(u: int) -> list[dict]:
        return [await one_request(client, name, u * rounds + r) for r in range(rounds)]

    start = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(user(u) for u in range(concurrency)))
               for r in rs]
    return results, time.perf_counter() - start


async def sweep(url: str, name: str, rounds: int, repeats: int) -> list[dict]:
    """Every level `repeats` times, interleaved (1, 4, 16, 64, 1, 4, ...), so a slow spell
    of a shared machine lands on all levels alike; runs of a level are pooled."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0,
                                timeout=600)
    await one_request(client, name, 10_000)  # warm-up
    pooled = {c: ([], 0.0) for c in LEVELS}
    for _ in range(repeats):
        for c in LEVELS:
            results, wall = await level_run(client, name, c, rounds)
            pooled[c] = (pooled[c][0] + results, pooled[c][1] + wall)
            print(f"c{c}: {sum(r['tokens'] for r in results) / wall:.1f} tok/s", flush=True)
    await client.close()
    out = []
    for c, (results, wall) in pooled.items():
        gaps = [g for r in results for g in r["gaps_s"]]
        out.append({"concurrency": c, "requests": len(results),
                    "ttft_s": _pcts([r["ttft_s"] for r in results]), "itl_s": _pcts(gaps),
                    "tok_s": _pcts([r["tok_s"] for r in results]),
                    "aggregate_tok_s": sum(r["tokens"] for r in results) / wall})
    return out


def _pcts(values: list[float]) -> dict:
    values = sorted(values)
    return {"p50": values[len(values) // 2], "p99": values[min(len(values) - 1,
                                                               int(len(values) * 0.99))]}


def report(machine: dict, c1: dict, levels: list[dict], args) -> str:
    by_c = {x["concurrency"]: x for x in levels}
    scale = by_c[16]["aggregate_tok_s"] / by_c[1]["aggregate_tok_s"]
    pipe = c1["pipe_tok_s"] / c1["local_tok_s"]
    ms = lambda s: f"{s * 1000:.1f}"  # noqa: E731
    rows = "\n".join(
        f"| {x['concurrency']} | {x['requests']} | {ms(x['ttft_s']['p50'])} | "
        f"{ms(x['ttft_s']['p99'])} | {ms(x['itl_s']['p50'])} | {ms(x['itl_s']['p99'])} | "
        f"{x['tok_s']['p50']:.1f} | {x['tok_s']['p99']:.1f} | {x['aggregate_tok_s']:.1f} |"
        for x in levels)
    return f"""# Serving benchmark

`python bench/serving/serve_bench.py --executor {args.executor} --threads {args.threads} \
--rounds {args.rounds} --repeats {args.repeats} --pairs {args.pairs}` —
{machine['date']}

- machine: `{machine['uname']}`, nproc {machine['nproc']}; load average {machine['load']} at
  the start (the machine is shared: other processes compete for its cores)
- checkpoint: qwen2-shaped, random weights, {json.dumps(SHAPE)}, {LAYERS} layers, {DTYPE};
  the master runs layers [0, {SPLIT}), the worker [{SPLIT}, {LAYERS}) + norm + LM head
- worker executor `{args.executor}`; torch threads per process: {args.threads or 'torch default'}
- a request: {PROMPT_TOKENS} prompt tokens, {OUTPUT_TOKENS} output tokens, greedy, streamed over
  SSE to openai's AsyncOpenAI; tok/s of a request = (tokens - 1) / (last chunk - first chunk)

## Pipeline at concurrency 1 vs the same engine in one process

{c1['pairs']} requests each, alternating (in-process = a Stage over all {LAYERS} layers and a
greedy argmax loop, no HTTP; pipeline = HTTP + head + gRPC + tail + sampler):

| | decode tok/s (median) | TTFT ms (median) |
|---|---|---|
| in-process engine | {c1['local_tok_s']:.1f} | {ms(c1['local_ttft_s'])} |
| two-process pipeline via the API | {c1['pipe_tok_s']:.1f} | {ms(c1['pipe_ttft_s'])} |

## Pipeline through the API, by concurrency

| concurrency | requests | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | tok/s/req p50 | tok/s/req p99 | aggregate tok/s |
|---|---|---|---|---|---|---|---|---|
{rows}

## Against the targets

| ratio | measured | target | |
|---|---|---|---|
| aggregate tok/s c16 / c1 | {scale:.2f}x | >= 6x | {'met' if scale >= 6 else 'NOT met'} |
| pipeline c1 / in-process decode tok/s | {pipe:.2f}x | >= 0.85x | {'met' if pipe >= 0.85 else 'NOT met'} |
"""


async def run(args) -> None:
    machine = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
               "uname": " ".join(platform.uname()), "nproc": os.cpu_count(),
               "load": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    if args.threads:
        torch.set_num_threads(args.threads)  # the in-process engine gets what each stage gets
    with tempfile.TemporaryDirectory(prefix="duet-bench-") as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else write_checkpoint(tmp / "bench-qwen2")
        engine = InProcess(model)
        stack = Stack(tmp, model, args.executor, args.threads)
        try:
            c1 = await compare_c1(engine, stack.url, model.name, args.pairs)
            print(json.dumps(c1), flush=True)
            levels = await sweep(stack.url, model.name, args.rounds, args.repeats)
        finally:
            stack.stop()
    text = report(machine, c1, levels, args)
    Path(args.out).write_text(text)
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results.md"))
    parser.add_argument("--model", help="use this checkpoint instead of writing one")
    parser.add_argument("--executor", choices=("local", "triton"), default="local")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per process (0 = torch's default)")
    parser.add_argument("--pairs", type=int, default=10, help="c1 requests, each way")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved sweeps, pooled")
    parser.add_argument("--rounds", type=int, default=2, help="requests per user per level")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
