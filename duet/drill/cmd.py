"""`duet drill SCENARIO --lab-dir DIR`: one failover drill against the lab, reported."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(subparsers) -> None:
    from duet.drill.scenarios import SCENARIOS

    p = subparsers.add_parser(
        "drill", help="inject a failure while clients stream through the VIP; report",
        description="Scenarios: " + "; ".join(f"{s.name}: {s.what}"
                                              for s in SCENARIOS.values()))
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--lab-dir", default="/run/duet-lab", help="the lab's run directory")
    p.add_argument("--clients", type=int, default=4, help="concurrent streaming clients")
    p.add_argument("--max-tokens", type=int, default=8, help="tokens per completion")
    p.add_argument("--timeout-s", type=float, default=120.0, help="longest wait for any step")
    p.add_argument("--json", default="", metavar="FILE",
                   help="report file (default drill-SCENARIO-TIME.json here)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from duet.drill.lab_target import LabTarget
    from duet.drill.report import format_table
    from duet.drill.runner import run_drill
    from duet.drill.scenarios import SCENARIOS

    if args.clients < 1:
        raise ValueError(f"--clients: expected >= 1, got {args.clients}")
    out = Path(args.json or f"drill-{args.scenario}-{time.strftime('%Y%m%dT%H%M%S')}.json")
    target = LabTarget(args.lab_dir)
    report = run_drill(target, SCENARIOS[args.scenario], out.with_suffix(".attempts.jsonl"),
                       args.clients, args.max_tokens, args.timeout_s)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(format_table(report))
    print(f"report: {out}")
    return 0 if report["ok"] else 1
