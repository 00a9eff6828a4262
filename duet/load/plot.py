"""The PNG of a `duet load` run: latency, memory and KV use over time (matplotlib, from the
`bench` extra; imported only when a plot is written)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

BUCKET_S = 10.0  # latency percentiles per bucket of request end times


def _buckets(requests: list[dict], key) -> tuple[list[float], list[float], list[float]]:
    """(bucket middle, p50, p99) of key(request) values, over successful requests."""
    ends = [r["end"] for r in requests if r["ok"]]
    mids, p50, p99 = [], [], []
    for start in np.arange(0.0, max(ends, default=0.0) + BUCKET_S, BUCKET_S):
        values = [v for r in requests if r["ok"] and start <= r["end"] < start + BUCKET_S
                  for v in key(r)]
        if values:
            mids.append(start + BUCKET_S / 2)
            p50.append(float(np.percentile(values, 50)))
            p99.append(float(np.percentile(values, 99)))
    return mids, p50, p99


def write_plot(path: Path, requests: list[dict], samples: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, (lat, mem, kv) = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    for label, key, scale in (("TTFT", lambda r: [r["ttft_s"]] if r["ttft_s"] else [], 1.0),
                              ("inter-token", lambda r: r["gaps_s"], 1.0)):
        mids, p50, p99 = _buckets(requests, key)
        lat.plot(mids, p50, label=f"{label} p50")
        lat.plot(mids, p99, linestyle="--", label=f"{label} p99")
    lat.set_yscale("log")
    lat.set_ylabel(f"seconds (per {BUCKET_S:g} s)")
    lat.legend(loc="upper right", fontsize="small")
    times = [s["t"] for s in samples]
    for name in sorted({n for s in samples for n in s["rss_bytes"]}):
        mem.plot(times, [s["rss_bytes"].get(name, np.nan) / 2**20 for s in samples], label=name)
    mem.set_ylabel("resident MiB")
    mem.legend(loc="upper left", fontsize="small")
    kv.plot(times, [100 * (s.get("kv_usage") or 0) for s in samples], label="KV used %")
    kv.set_ylabel("KV used %")
    kv.set_xlabel("seconds since the start")
    running = kv.twinx()  # its own scale: a few % of KV next to 64 requests
    running.plot(times, [s.get("running") or 0 for s in samples], color="tab:orange",
                 label="requests running")
    running.set_ylabel("requests running")
    kv.legend(loc="upper left", fontsize="small")
    running.legend(loc="upper right", fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
