"""`duet drill SCENARIO`: one failover drill against the lab (--lab-dir) or a real pair
(--host-a/--host-b/--vip/--model), reported as a table and a JSON file."""
from __future__ import annotations

import argparse
import json
import os
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
    p.add_argument("--max-tokens", type=int, default=0,
                   help="tokens per completion (default 8; crash-a-resume: 200)")
    p.add_argument("--timeout-s", type=float, default=120.0, help="longest wait for any step")
    p.add_argument("--settle-s", type=float, default=1.0,
                   help="clients keep running this long after each recovery")
    p.add_argument("--json", default="", metavar="FILE",
                   help="report file (default drill-SCENARIO-TIME.json here)")
    real = p.add_argument_group("a real pair instead of the lab (faults over ssh + systemctl)")
    real.add_argument("--host-a", default="", metavar="SSH_DEST", help="e.g. root@host-a")
    real.add_argument("--host-b", default="", metavar="SSH_DEST")
    real.add_argument("--vip", default="", help="the API's virtual IP")
    real.add_argument("--port", type=int, default=8000, help="the API port (default 8000)")
    real.add_argument("--model", default="", help="the served model name")
    real.add_argument("--interface", default="eth0", help="host A's interface (cut-a-link)")
    real.add_argument("--ssh-prefix", default="", help='e.g. "sudo -n"')
    p.set_defaults(run=run)


def make_target(args: argparse.Namespace):
    """The lab in --lab-dir, or the pair --host-a/--host-b with their VIP."""
    if not (args.host_a or args.host_b):
        from duet.drill.lab_target import LabTarget

        return LabTarget(args.lab_dir)
    from duet.drill.pair_target import Pair, PairTarget

    for name in ("host_a", "host_b", "vip", "model"):
        if not getattr(args, name):
            raise ValueError(f"--{name.replace('_', '-')}: required for a real pair")
    api = {h: f"http://{getattr(args, f'host_{h}').rpartition('@')[2]}:{args.port}" for h in "ab"}
    return PairTarget(Pair(args.host_a, args.host_b, args.vip, api["a"], api["b"], args.model,
                           args.port, args.interface, ssh_prefix=args.ssh_prefix))


def run(args: argparse.Namespace) -> int:
    from duet.drill.report import format_table
    from duet.drill.runner import run_drill
    from duet.drill.scenarios import SCENARIOS

    if os.geteuid() != 0 and not args.host_a:
        raise PermissionError("duet drill: the lab needs root (its clients run in a namespace)")
    if args.clients < 1:
        raise ValueError(f"--clients: expected >= 1, got {args.clients}")
    if args.settle_s < 0:
        raise ValueError(f"--settle-s: expected >= 0, got {args.settle_s}")
    out = Path(args.json or f"drill-{args.scenario}-{time.strftime('%Y%m%dT%H%M%S')}.json")
    target, scenario = make_target(args), SCENARIOS[args.scenario]
    if scenario.resuming:  # long streams that must survive the fault with the same text
        from duet.drill.resume_drill import format_resume_table, run_resume_drill

        report = run_resume_drill(target, scenario, out.with_suffix(".attempts.jsonl"),
                                  args.clients, args.max_tokens or 200, args.timeout_s)
        table = format_resume_table(report)
    else:
        report = run_drill(target, scenario, out.with_suffix(".attempts.jsonl"), args.clients,
                           args.max_tokens or 8, args.timeout_s, args.settle_s)
        table = format_table(report)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(table)
    print(f"report: {out}")
    return 0 if report["ok"] else 1
