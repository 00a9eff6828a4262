"""`duet lab up|down|status`: the two-host system in network namespaces on this machine."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

DEFAULT_DIR = "/run/duet-lab"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "lab", help="run host A, host B and a client in network namespaces (root)",
        description="Host A: master API + VRRP agent; host B: worker (Triton) + standby API + "
        "VRRP agent; a client namespace that reaches the API through the VIP. Mutual TLS "
        "between the APIs and the worker, a tiny checkpoint unless --model is given.")
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--dir", default=DEFAULT_DIR,
                   help=f"run directory: configs, logs, certificates, lab.json (default {DEFAULT_DIR})")
    p.add_argument("--prefix", default="duetlab", help="namespace name prefix (default duetlab)")
    p.add_argument("--model", default="", help="checkpoint folder (default: a tiny one in --dir)")
    p.add_argument("--executor", choices=("triton", "local"), default="triton",
                   help="how the worker runs the tail (default triton)")
    p.add_argument("--standby", choices=("hot", "cold"), default="hot",
                   help="hot: the standby preloads the head (default); cold: loads it on promotion")
    p.add_argument("--advert-interval-s", type=float, default=0.1,
                   help="VRRP advertisement interval (default 0.1)")
    p.add_argument("--timeout-s", type=float, default=600.0,
                   help="how long `up` waits for the API through the VIP (default 600)")
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from duet.lab import build

    if os.geteuid() != 0:
        raise PermissionError("duet lab: needs root (it makes network namespaces)")

    if args.action == "down":
        print(build.down(Path(args.dir), args.prefix))
        return 0
    if args.action == "status":
        report = build.status(Path(args.dir))
        print(json.dumps(report, indent=1) if args.json else build.format_status(report))
        return 0 if report["healthy"] else 1
    return _up(args)


def _up(args: argparse.Namespace) -> int:
    from duet.lab import build
    from duet.lab.configs import LabOptions

    run_dir = Path(args.dir)
    if (run_dir / "lab.json").exists():
        raise ValueError(f"--dir: a lab already runs from {run_dir}; "
                         f"`duet lab down --dir {run_dir}` first")
    options = LabOptions(executor=args.executor, standby_mode=args.standby,
                         advert_interval_s=args.advert_interval_s)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # clean up on SIGTERM too
    try:
        state = build.up(run_dir, args.prefix, args.model, options, args.timeout_s)
    except BaseException as e:
        print(f"duet lab up: failed: {e}", file=sys.stderr)
        print(build.down(run_dir, args.prefix), file=sys.stderr)
        return 1
    print(build.announce(state))
    return 0

