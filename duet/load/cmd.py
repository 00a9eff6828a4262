"""`duet load --url URL`: N streaming clients for T minutes against any deployment; prints a
progress line while it runs, then a table; writes PREFIX.json, PREFIX.md and PREFIX.png.
Exit 1 when a check fails (a failed request, a 5xx, memory growth, KV left at the end)."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path



def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    return int(low), int(high or low)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "load", help="N streaming clients for T minutes against a deployment: throughput, "
                     "TTFT and inter-token percentiles, errors, server memory and KV; a plot",
        description=__doc__)
    p.add_argument("--url", required=True, help="the API, http://host:port (a VIP will do)")
    p.add_argument("--model", default="", help="default: the first of /v1/models")
    p.add_argument("--clients", type=int, default=16, help="concurrent streams (default 16)")
    p.add_argument("--minutes", type=float, default=1.0, help="how long (default 1)")
    p.add_argument("--prompt-words", type=_range, default=(8, 256), metavar="MIN:MAX")
    p.add_argument("--max-tokens", type=_range, default=(16, 128), metavar="MIN:MAX")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""))
    p.add_argument("--admin-key", default="", help="for /admin/stats off loopback")
    p.add_argument("--pid", type=int, action="append", default=[],
                   help="a local server process: its and its children's RSS (repeatable)")
    p.add_argument("--metrics", action="append", default=[], metavar="NAME=URL",
                   help="another Prometheus endpoint with process_resident_memory_bytes, "
                        "e.g. worker=http://host-b:9400/metrics (repeatable)")
    p.add_argument("--sample-s", type=float, default=2.0, help="memory/KV sampling period")
    p.add_argument("--warmup-s", type=float, default=-1.0,
                   help="memory growth is measured after this (default: 20%% of the run, "
                        "at most 60 s)")
    p.add_argument("--out", default="", help="PREFIX of the files (default load-TIME)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib)")
    p.set_defaults(run=run)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    return (f"{socket.gethostname()}, {os.cpu_count()} x {cpu}, load average "
            f"{os.getloadavg()[0]:.1f} at the start")


def run(args: argparse.Namespace) -> int:
    from duet.load.clients import Workload
    from duet.load.report import markdown
    from duet.load.run import model_name, run_load
    from duet.load.watch import ServerWatch

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    url = args.url.rstrip("/")
    metrics = dict(m.split("=", 1) for m in args.metrics if "=" in m)
    if len(metrics) != len(args.metrics):
        raise ValueError("--metrics: expected NAME=URL")
    w = Workload(url, args.model or model_name(url, args.api_key), args.clients,
                 args.minutes * 60, args.prompt_words, args.max_tokens, args.seed,
                 args.api_key)
    warmup_s = args.warmup_s if args.warmup_s >= 0 else min(60.0, w.duration_s / 5)
    watch = ServerWatch(url, pids=args.pid, metrics=metrics, period_s=args.sample_s,
                        admin_key=args.admin_key)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    where = machine()
    requests, summary = asyncio.run(run_load(w, watch, warmup_s))
    out = Path(args.out or f"load-{time.strftime('%Y%m%dT%H%M%S')}")
    report = {"date": started, "machine": where,
              "load_average_at_end": round(os.getloadavg()[0], 1),
              "workload": {k: getattr(w, k) for k in ("url", "model", "clients", "duration_s",
                                                     "prompt_words", "max_tokens", "seed")},
              "warmup_s": warmup_s, "summary": summary, "samples": watch.samples}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    if not args.no_plot:
        from duet.load.plot import write_plot

        write_plot(out.with_suffix(".png"), requests, watch.samples,
                   f"duet load: {w.clients} clients, {w.model}, {started}")
    print(f"report: {out}.json, {out}.md" + ("" if args.no_plot else f", {out}.png"))
    return 0 if summary["ok"] else 1
