"""The master's HTTP server CPU per streamed token: uvicorn's h11 protocol against httptools.

    python -m bench.http.protocols [--rounds 6] [--out bench/http/protocols.json]

bench/http/overhead.py's server (the real app, DeepSeek-V3 tokenizer and chat template, behind a
generator that costs nothing) runs twice, once per protocol; 16 SSE chat streams of 512 tokens go to each in turn, alternating
for `rounds` rounds. Measured: the server process's CPU time (/proc, user + system) per
output token, so the client's own work and the host's load leave the figure alone.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.http.overhead import REPLY_TOKENS, http_rate, model_folder, start_server

PROTOCOLS = ("h11", "httptools")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="http-protocols-"))
    model = model_folder(tmp)
    servers = {p: start_server(model, p) for p in PROTOCOLS}
    per_token = {p: [] for p in PROTOCOLS}
    try:
        for p, (_, url) in servers.items():  # warm-up
            asyncio.run(http_rate(url, args.concurrency, True, rounds=1))
        for _ in range(args.rounds):
            for p, (proc, url) in servers.items():
                before = cpu_s(proc.pid)
                t0 = time.perf_counter()
                rate = asyncio.run(http_rate(url, args.concurrency, True, rounds=1))
                tokens = rate * (time.perf_counter() - t0)
                per_token[p].append((cpu_s(proc.pid) - before) / tokens * 1e6)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"nproc {os.cpu_count()}, load {os.getloadavg()[0]:.2f}",
              "load": f"{args.concurrency} SSE chat streams x {REPLY_TOKENS} tokens",
              "server_cpu_us_per_token": {p: statistics.median(v) for p, v in per_token.items()},
              "rounds": per_token}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
