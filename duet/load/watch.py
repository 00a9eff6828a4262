"""The servers' memory and KV use over time, sampled while the clients run.

- resident memory of local processes: each `--pid` and every process under it (for `duet
  serve`: the master, the worker, a managed tritonserver and its Python stub), from /proc;
- `process_resident_memory_bytes` of each Prometheus endpoint given (the master's /metrics
  has it, so does a worker's `metrics_listen`): memory of remote hosts;
- from the API: KV use (`vllm:gpu_cache_usage_perc`, the larger of the two stages), requests
  running, and, where /admin/stats answers (loopback or an admin key), KV tokens held by
  running sequences on each stage, which must come back to zero.
"""
from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import httpx

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
NAMES = (("tritonserver", "tritonserver"), ("triton_python_backend_stub", "triton-stub"),
         ("duet.cli master", "master"), ("duet master", "master"),
         ("duet.cli worker", "worker"), ("duet worker", "worker"),
         ("duet.cli serve", "serve"), ("duet serve", "serve"))


def _metric(text: str, name: str) -> float | None:
    found = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", text, re.M)
    return float(found[1]) if found else None


def _process_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, short name, resident bytes) of every process we may read."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            argv = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            rss = int((stat.parent / "statm").read_text().split()[1]) * PAGE_BYTES
        except (OSError, ValueError, IndexError):
            continue
        name = next((short for part, short in NAMES if part in argv),
                    Path(argv.split(" ", 1)[0]).name or "?")
        table[int(stat.parent.name)] = (int(fields[1]), name, rss)
    return table


def local_rss(roots: list[int]) -> dict[str, int]:
    """'name pid' -> resident bytes for each root pid and its descendants."""
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, [p for p in roots if p in table]
    while todo:
        pid = todo.pop()
        found[f"{table[pid][1]} {pid}"] = table[pid][2]
        todo.extend(children.get(pid, []))
    return found


class ServerWatch:
    """Samples every period_s into `samples`: {t, rss_bytes{name}, kv_usage, running, ...}."""

    def __init__(self, url: str, *, pids: list[int], metrics: dict[str, str],
                 period_s: float = 2.0, admin_key: str = ""):
        self.url, self.pids, self.metrics, self.period_s = url, pids, metrics, period_s
        self.headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
        self.samples: list[dict] = []

    async def sample(self, client: httpx.AsyncClient, t0: float, final: bool = False) -> dict:
        """One sample; `final` adds /admin/stats (every call to it is logged by the API)."""
        s: dict = {"t": round(time.monotonic() - t0, 3),
                   "rss_bytes": await asyncio.to_thread(local_rss, self.pids)}
        for name, url in {"api": f"{self.url}/metrics", **self.metrics}.items():
            text = await self._get(client, url)
            rss = _metric(text, "process_resident_memory_bytes") if text else None
            if rss is not None and not (name == "api" and self.pids):  # local: counted above
                s["rss_bytes"][f"{name} (metrics)"] = int(rss)
            if name == "api" and text:
                s["kv_usage"] = _metric(text, "vllm:gpu_cache_usage_perc")
                s["running"] = _metric(text, "vllm:num_requests_running")
        stats = await self._get(client, f"{self.url}/admin/stats", json=True) if final else None
        if isinstance(stats, dict):
            for key in ("head_kv_used_tokens", "worker_kv_used_tokens"):
                if key in stats:
                    s[key] = stats[key]
        return s

    async def _get(self, client: httpx.AsyncClient, url: str, json: bool = False):
        try:
            r = await client.get(url, headers=self.headers)
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        return r.json() if json else r.text

    async def run(self, t0: float, stop: asyncio.Event) -> None:
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
            while not stop.is_set():
                self.samples.append(await self.sample(client, t0))
                try:
                    await asyncio.wait_for(stop.wait(), self.period_s)
                except asyncio.TimeoutError:
                    pass
