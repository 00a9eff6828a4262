"""The load side of the pipeline benchmark: streamed greedy completions through the openai
client, spread over several client processes so that parsing 64 streams' chunks in Python
does not cap what the server can show (one asyncio process parses ~10k chunks/s at best)."""
from __future__ import annotations

import asyncio
import multiprocessing
import time

import openai

PROMPT_TOKENS, OUTPUT_TOKENS = 32, 128
USERS_PER_PROCESS = 16


def prompt(i: int, n: int = PROMPT_TOKENS) -> list[int]:
    return [(1000 + 37 * i + 11 * j) % 8000 for j in range(n)]  # in any vocabulary here


async def one_request(client, name: str, ids: list[int], max_tokens: int) -> dict:
    """One streamed greedy completion: start, first and last chunk (monotonic s), tokens."""
    start = time.monotonic()
    first = last = None
    tokens = 0
    async for chunk in await client.completions.create(
            model=name, prompt=ids, max_tokens=max_tokens, temperature=0, stream=True,
            stream_options={"include_usage": True}):
        now = time.monotonic()
        first, last = first or now, now if chunk.choices else last
        tokens = chunk.usage.completion_tokens if chunk.usage else tokens
    return {"start": start, "first": first, "last": last, "tokens": tokens}


def _client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)


async def _users(url: str, name: str, users: list[int], rounds: int) -> list[dict]:
    client = _client(url)

    async def user(u: int) -> list[dict]:
        return [await one_request(client, name, prompt(u * rounds + r), OUTPUT_TOKENS)
                | {"round": r} for r in range(rounds)]

    try:
        return [r for rs in await asyncio.gather(*(user(u) for u in users)) for r in rs]
    finally:
        await client.close()


_start_line = None  # the client processes' common start (a Barrier, set by _ready)


def _ready(barrier) -> None:
    global _start_line
    _start_line = barrier


def _process_main(url: str, name: str, users: list[int], rounds: int) -> list[dict]:
    # Every process starts its users together, once all have imported openai (~1 s each):
    # a process still starting while the others stream made the level's wall time longer and
    # its concurrency lower than named (bench/gpu/pipeline.md, session 5)
    if _start_line is not None:
        _start_line.wait(timeout=120)
    return asyncio.run(_users(url, name, users, rounds))


def level(url: str, name: str, concurrency: int, rounds: int) -> dict:
    """`concurrency` users, each sending `rounds` requests back to back."""
    users = list(range(concurrency))
    groups = [users[i:i + USERS_PER_PROCESS] for i in range(0, concurrency, USERS_PER_PROCESS)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(groups))  # passed at the processes' start, as a Barrier must be
    with ctx.Pool(len(groups), initializer=_ready, initargs=(barrier,)) as pool:
        parts = pool.starmap(_process_main, [(url, name, g, rounds) for g in groups])
    results = [r for part in parts for r in part]
    wall = max(r["last"] for r in results) - min(r["start"] for r in results)
    per_req = sorted((r["tokens"] - 1) / max(r["last"] - r["first"], 1e-9) for r in results)
    ttft = sorted(r["first"] - r["start"] for r in results)
    starts = sorted(r["start"] for r in results)[:concurrency]  # each user's first request
    # by round: the first pays each client's connections and the shapes the warm-up missed
    by_round = [sorted(r["first"] - r["start"] for r in results if r["round"] == k)
                for k in range(rounds)]
    return {"concurrency": concurrency, "requests": len(results),
            "client_processes": len(groups), "start_spread_ms": (starts[-1] - starts[0]) * 1e3,
            "aggregate_tok_s": sum(r["tokens"] for r in results) / wall,
            "tok_s_per_request_p50": per_req[len(per_req) // 2],
            "ttft_ms_p50": ttft[len(ttft) // 2] * 1e3,
            "ttft_ms_mean": sum(ttft) / len(ttft) * 1e3,  # beside the server's own mean
            "ttft_ms_p50_by_round": [t[len(t) // 2] * 1e3 for t in by_round]}


async def _ttft(url: str, name: str, prompt_tokens: int, n: int) -> list[float]:
    client = _client(url)
    try:
        out = []
        for i in range(n):
            r = await one_request(client, name, prompt(5000 + i, prompt_tokens), 1)
            out.append(r["first"] - r["start"])
        return out
    finally:
        await client.close()


def ttft_ms(url: str, name: str, prompt_tokens: int = 2000, n: int = 3) -> float:
    """Median time to the first token of a long prompt, alone on the server."""
    return sorted(asyncio.run(_ttft(url, name, prompt_tokens, n)))[n // 2] * 1e3


async def _burst(url: str, name: str, n: int, first: int, max_tokens: int) -> list[float]:
    client = _client(url)
    try:
        rs = await asyncio.gather(*(one_request(client, name, prompt(first + i), max_tokens)
                                    for i in range(n)))
        return sorted(r["first"] - r["start"] for r in rs)
    finally:
        await client.close()


def burst(url: str, name: str, n: int, first: int, max_tokens: int) -> list[float]:
    """n streamed completions started together from one client (prompts first, first + 1,
    ...): their times to the first token in seconds, sorted."""
    return asyncio.run(_burst(url, name, n, first, max_tokens))


def warm_up(url: str, name: str) -> None:
    """Graph buckets and allocator pools of both stages, before anything is timed."""
    burst(url, name, 64, 9000, 8)
