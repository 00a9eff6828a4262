"""One `duet load` run: clients and the server watch side by side, a progress line every
PROGRESS_S on stderr, then the KV settling and the summary."""
from __future__ import annotations

import asyncio
import sys
import time

import httpx

from duet.load.clients import Workload, run_clients
from duet.load.report import progress_line, summarize
from duet.load.watch import ServerWatch

PROGRESS_S = 10.0
SETTLE_S = 15.0  # after the clients stop, KV has this long to come back to zero


def model_name(url: str, api_key: str = "") -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    r = httpx.get(f"{url}/v1/models", headers=headers, timeout=10, trust_env=False)
    r.raise_for_status()
    return r.json()["data"][0]["id"]


async def settle(watch: ServerWatch, t0: float) -> dict:
    """The last sample, once the KV held by sequences is back to zero (or SETTLE_S passed)."""
    deadline = time.monotonic() + SETTLE_S
    async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
        while True:
            final = await watch.sample(client, t0, final=True)
            held = [final.get(k) for k in ("head_kv_used_tokens", "worker_kv_used_tokens")]
            if all(v == 0 for v in held) or (held == [None, None] and not final.get("kv_usage")):
                return final
            if time.monotonic() > deadline:
                return final
            await asyncio.sleep(0.5)


async def run_load(w: Workload, watch: ServerWatch, warmup_s: float) -> tuple[list, dict]:
    """(every request's record, the summary)."""
    t0 = time.monotonic()
    done: list[dict] = []
    stop = asyncio.Event()
    watching = asyncio.create_task(watch.run(t0, stop))
    clients = asyncio.create_task(run_clients(w, done, t0))
    while not clients.done():
        await asyncio.wait({clients}, timeout=PROGRESS_S)
        sample = watch.samples[-1] if watch.samples else None
        print(progress_line(time.monotonic() - t0, w.duration_s, done, sample),
              file=sys.stderr, flush=True)
    stop.set()
    await watching
    clients.result()
    final = await settle(watch, t0)
    watch.samples.append(final)
    return done, summarize(done, watch.samples, final, w.duration_s, warmup_s)
