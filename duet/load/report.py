"""`duet load`'s numbers: throughput, TTFT and inter-token percentiles, errors, memory growth
after warm-up, KV at the end; the progress line, the JSON and the markdown table."""
from __future__ import annotations

import statistics
from collections import Counter

import numpy as np

PERCENTILES = (50, 90, 99)
GROWTH_LIMIT = 0.05  # resident memory after warm-up may grow by less than this
WINDOW_S = 30.0  # memory is compared as medians over windows of this length


def percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    found = np.percentile(np.asarray(values, dtype=np.float64), PERCENTILES)
    return {f"p{p}": round(float(v), 5) for p, v in zip(PERCENTILES, found)}


def failures(requests: list[dict]) -> dict[str, int]:
    """Failed requests by kind: the HTTP status, "sse error event", a transport error, or
    "incomplete" (status 200, no [DONE])."""
    return dict(Counter(str(r["status"]) if r["status"] not in (None, 200)
                        else r["error"] or "incomplete" for r in requests if not r["ok"]))


def memory_growth(samples: list[dict], warmup_s: float) -> dict[str, dict]:
    """Per process: median RSS in the window after warm-up vs in the last window."""
    end = samples[-1]["t"] if samples else 0.0
    out = {}
    for name in {n for s in samples for n in s["rss_bytes"]}:
        series = [(s["t"], s["rss_bytes"][name]) for s in samples if name in s["rss_bytes"]]
        first = [v for t, v in series if warmup_s <= t < warmup_s + WINDOW_S]
        last = [v for t, v in series if t >= end - WINDOW_S]
        if not first or not last:
            continue
        start, final = statistics.median(first), statistics.median(last)
        out[name] = {"after_warmup_bytes": int(start), "end_bytes": int(final),
                     "growth": round(final / start - 1, 4)}
    return out


def summarize(requests: list[dict], samples: list[dict], final: dict, duration_s: float,
              warmup_s: float) -> dict:
    ok = [r for r in requests if r["ok"]]
    span_s = max((r["end"] for r in requests), default=duration_s)
    tokens = sum(r["tokens"] for r in ok)
    growth = memory_growth(samples, warmup_s)
    kv_end = {k: final[k] for k in ("head_kv_used_tokens", "worker_kv_used_tokens", "kv_usage")
              if final.get(k) is not None}
    report = {
        "requests": len(requests), "completed": len(ok), "failed": len(requests) - len(ok),
        "failures": failures(requests),
        "server_errors_5xx": sum(1 for r in requests if (r["status"] or 0) >= 500),
        "output_tokens": tokens, "tokens_per_s": round(tokens / span_s, 2),
        "requests_per_s": round(len(ok) / span_s, 3),
        "ttft_s": percentiles([r["ttft_s"] for r in ok if r["ttft_s"] is not None]),
        "itl_s": percentiles([g for r in ok for g in r["gaps_s"]]),
        "memory": growth, "kv_at_end": kv_end,
    }
    report["checks"] = {
        "no failed request": report["failed"] == 0 and report["requests"] > 0,
        "no 5xx": report["server_errors_5xx"] == 0,
        f"resident memory after warm-up grew < {GROWTH_LIMIT:.0%}":
            bool(growth) and all(g["growth"] < GROWTH_LIMIT for g in growth.values()),
        "KV back to zero at the end": _kv_free(kv_end),
    }
    report["ok"] = all(report["checks"].values())
    return report


def _kv_free(kv_end: dict) -> bool:
    """Tokens held by sequences on both stages (/admin/stats); else the usage gauge."""
    held = [kv_end[k] for k in ("head_kv_used_tokens", "worker_kv_used_tokens") if k in kv_end]
    return all(v == 0 for v in held) if held else kv_end.get("kv_usage") == 0


def progress_line(elapsed_s: float, duration_s: float, requests: list[dict],
                  sample: dict | None) -> str:
    recent = [r for r in requests if r["end"] >= elapsed_s - 10]
    tokens = sum(r["tokens"] for r in recent if r["ok"])
    ttft = percentiles([r["ttft_s"] for r in recent if r["ok"] and r["ttft_s"] is not None])
    itl = percentiles([g for r in recent if r["ok"] for g in r["gaps_s"]])
    failed = sum(not r["ok"] for r in requests)
    line = (f"{elapsed_s:6.0f}/{duration_s:.0f} s  done {len(requests) - failed}  failed "
            f"{failed}  {tokens / 10:.0f} tok/s")
    if ttft and itl:
        line += f"  TTFT p50 {ttft['p50']:.2f} s  ITL p50 {itl['p50'] * 1e3:.0f} ms"
    if sample:
        rss = "  ".join(f"{n} {b / 2**20:.0f} MiB" for n, b in sorted(sample["rss_bytes"].items()))
        line += f"  KV {100 * (sample.get('kv_usage') or 0):.1f}%  {rss}"
    return line


def markdown(report: dict) -> str:
    s = report["summary"]
    w = report["workload"]

    def pct(d, scale=1.0, unit="s"):
        return "-" if not d else " / ".join(f"{d[f'p{p}'] * scale:.3g}" for p in PERCENTILES) + \
            f" {unit}"
    rows = [
        ("when, where", f"{report['date']}, {report['machine']}, "
                        f"{report['load_average_at_end']} at the end (shared machine)"),
        ("workload", f"{w['clients']} streaming clients for {w['duration_s']:g} s; prompts "
                     f"{w['prompt_words'][0]}-{w['prompt_words'][1]} words, outputs "
                     f"{w['max_tokens'][0]}-{w['max_tokens'][1]} tokens; {w['url']}"),
        ("requests", f"{s['requests']}: {s['completed']} completed, {s['failed']} failed"
                     + (f" {s['failures']}" if s["failures"] else "")
                     + f", {s['server_errors_5xx']} answered 5xx"),
        ("throughput", f"{s['tokens_per_s']} output tok/s, {s['requests_per_s']} req/s"),
        ("TTFT p50 / p90 / p99", pct(s["ttft_s"])),
        ("inter-token p50 / p90 / p99", pct(s["itl_s"], 1e3, "ms")),
    ]
    rows += [(f"RSS {name}", f"{g['after_warmup_bytes'] / 2**20:.0f} MiB after warm-up -> "
              f"{g['end_bytes'] / 2**20:.0f} MiB at the end ({g['growth']:+.1%})")
             for name, g in sorted(s["memory"].items())]
    rows.append(("KV at the end", ", ".join(f"{k} {v}" for k, v in s["kv_at_end"].items())
                 or "-"))
    rows += [("ok" if ok else "FAILED", name) for name, ok in s["checks"].items()]
    return "| | |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"
