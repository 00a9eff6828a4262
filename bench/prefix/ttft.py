"""TTFT of a 2,000-token shared system prompt + a 20-token question through the HTTP API:
the first request (computes the prompt) against later ones (reuse its kept KV blocks), with
prefix caching on, and the same requests with it off, side by side in one run.

    .venv/bin/python -m bench.prefix.ttft [--later 8] [--out bench/prefix/results.md]
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.serving.pipeline_stack import SHAPE, Stack, write_checkpoint

HERE = Path(__file__).parent
SYSTEM_TOKENS, QUESTION_TOKENS = 2000, 20


def prompt(question: int, system: int = 7) -> list[int]:
    vocab = SHAPE["vocab_size"]
    head = [(system + 13 * j) % vocab for j in range(SYSTEM_TOKENS)]
    return head + [(3001 + 97 * question + 5 * j) % vocab for j in range(QUESTION_TOKENS)]


async def ttft_s(http: httpx.AsyncClient, url: str, name: str, ids: list[int]) -> float:
    """Seconds from sending to the first streamed token."""
    body = {"model": name, "prompt": ids, "max_tokens": 4, "temperature": 0, "stream": True}
    start, first = time.perf_counter(), None
    async with http.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if first is None and line.startswith("data:"):
                first = time.perf_counter() - start
    return first


async def measure(url: str, name: str, later: int) -> dict:
    async with httpx.AsyncClient(timeout=1200) as http:
        await ttft_s(http, url, name, prompt(0, system=11)[-64:])  # warm-up, shares nothing
        first = await ttft_s(http, url, name, prompt(0))
        rest = [await ttft_s(http, url, name, prompt(q)) for q in range(1, later + 1)]
        metrics = (await http.get(f"{url}/metrics")).text
    hits = [line for line in metrics.splitlines()
            if line.startswith(("vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total"))]
    return {"first_s": first, "later_s": statistics.median(rest), "later_all_s": rest,
            "counters": hits}


async def run(args) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="duet-prefix-") as tmp:
        tmp = Path(tmp)
        model = Path(args.model) if args.model else write_checkpoint(tmp / "bench-qwen2")
        for caching, later in ((True, args.later), (False, args.later_off)):
            run_dir = tmp / f"caching-{caching}"
            run_dir.mkdir()
            stack = Stack(run_dir, model, "local", args.threads,
                          enable_prefix_caching=caching, step_token_budget=2048)
            try:
                results[caching] = await measure(stack.url, model.name, later)
            finally:
                stack.stop()
            print(caching, results[caching], flush=True)
    return results


def report(results: dict, args) -> str:
    on, off = results[True], results[False]
    machine = (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
               f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = [f"| {name} | {r['first_s'] * 1e3:.0f} | {r['later_s'] * 1e3:.0f} | "
            f"{r['first_s'] / r['later_s']:.1f}x |" for name, r in
            (("prefix caching on", on), ("prefix caching off", off))]
    return "\n".join([
        "# Prefix caching: TTFT of a shared 2,000-token system prompt", "",
        f"`python -m bench.prefix.ttft --later {args.later} --later-off {args.later_off}`; "
        f"{machine}.",
        "Checkpoint: the serving bench's qwen2 shape (hidden 1024, 8 layers, split 4 | 4, "
        "bf16), worker (local executor) + master on loopback, streamed completions of "
        f"{SYSTEM_TOKENS} shared + {QUESTION_TOKENS} own prompt tokens, one at a time.", "",
        "| run | first request TTFT (ms) | later requests, median (ms) | first / later |",
        "|---|---|---|---|", *rows, "",
        f"Later requests with caching on are {off['later_s'] / on['later_s']:.1f}x faster "
        "than the same requests with it off.", "",
        "Absolute times follow the machine's load (shared, noted above); the ratios come "
        "from one run, side by side.", "",
        "Counters after the caching-on run: " + "; ".join(f"`{c}`" for c in on["counters"]),
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "results.md"))
    parser.add_argument("--model", help="use this checkpoint instead of writing one")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--later", type=int, default=8, help="requests after the first")
    parser.add_argument("--later-off", type=int, default=2,
                        help="the same with caching off (each computes the whole prompt)")
    args = parser.parse_args()
    text = report(asyncio.run(run(args)), args)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
