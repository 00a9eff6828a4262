"""VRRP failover figures from the namespace lab (run as root from the repo root):

    python -m bench.vrrp.failover --runs 10

Writes bench/vrrp/results.json and results.md: host-loss (SIGKILL) and graceful-stop
(SIGTERM) outages and first-GARP latency, p50 and max, against the issue's bounds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import statistics
import subprocess
from pathlib import Path

from vrrp.drill import elect, handover, master_down_s, skew_s
from vrrp.lab import Lab

HERE = Path(__file__).resolve().parent
ADVERT_S = 0.1  # the lab's advert interval
B_PRIORITY = 100
BOUNDS_S = {
    "host_loss_outage_s": master_down_s(B_PRIORITY, ADVERT_S) + 0.050,
    "graceful_stop_outage_s": skew_s(B_PRIORITY, ADVERT_S) + 0.050,
    "first_garp_after_vip_s": 0.010,
}


def one_run(sig: int) -> dict:
    lab = Lab()
    try:
        elect(lab)
        got = handover(lab, sig)
        return {"outage_s": got.outage_s, "garp_after_vip_s": got.garp_after_vip_s}
    finally:
        lab.close()


def summarize(values: list[float], bound: float) -> dict:
    return {"p50_ms": round(statistics.median(values) * 1000, 2),
            "max_ms": round(max(values) * 1000, 2), "bound_ms": round(bound * 1000, 2),
            "all_within_bound": max(values) <= bound, "runs": len(values),
            "samples_ms": [round(v * 1000, 2) for v in values]}


def measure(runs: int) -> dict:
    kill = [one_run(signal.SIGKILL) for _ in range(runs)]
    term = [one_run(signal.SIGTERM) for _ in range(runs)]
    return {
        "host_loss_outage_s": summarize([r["outage_s"] for r in kill],
                                        BOUNDS_S["host_loss_outage_s"]),
        "graceful_stop_outage_s": summarize([r["outage_s"] for r in term],
                                            BOUNDS_S["graceful_stop_outage_s"]),
        "first_garp_after_vip_s": summarize([r["garp_after_vip_s"] for r in kill + term],
                                            BOUNDS_S["first_garp_after_vip_s"]),
    }


def to_markdown(report: dict) -> str:
    rows = "\n".join(
        f"| {name} | {f['p50_ms']} | {f['max_ms']} | {f['bound_ms']} | "
        f"{'yes' if f['all_within_bound'] else 'NO'} | {f['runs']} |"
        for name, f in report["figures"].items())
    return f"""# VRRP failover figures

Measured {report['date']} by `python -m bench.vrrp.failover --runs {report['runs']}`.

- machine: `{report['uname']}`, {report['cpus']} CPUs
- lab: two agents (A priority 150, B priority {B_PRIORITY}) and a client, each in its own
  network namespace on one bridge; adverts every {ADVERT_S} s; agents at SCHED_RR 10
- outage: from the kill (monotonic clock) to B's first gratuitous ARP for the VIP
  arriving at the client's interface (AF_PACKET, kernel receive timestamp); the
  client's neighbour entry is then checked to point at B
- first GARP: from B sending the netlink request that adds the VIP to that GARP at the
  client (kernel receive timestamps on the client's AF_PACKET socket)

| figure | p50 ms | max ms | bound ms | all within | runs |
|---|---|---|---|---|---|
{rows}

Bounds: host loss ≤ 3·interval + Skew_Time + 50 ms; graceful stop ≤ Skew_Time + 50 ms;
first GARP ≤ 10 ms after the VIP is added. Raw samples are in results.json.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    report = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "uname": subprocess.run(["uname", "-a"], capture_output=True,
                                text=True).stdout.strip(),
        "cpus": os.cpu_count(), "runs": args.runs,
        "advert_interval_s": ADVERT_S, "figures": measure(args.runs),
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "results.md").write_text(to_markdown(report))
    print(to_markdown(report))
    within = all(f["all_within_bound"] for f in report["figures"].values())
    return 0 if within else 1


if __name__ == "__main__":
    raise SystemExit(main())
