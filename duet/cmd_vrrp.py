"""`duet vrrp --config FILE`: the VRRPv3 agent that moves the API's virtual IP."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "vrrp",
        help="run the VRRPv3 agent that holds or takes over the API's virtual IP",
        description="Run the keepalived-compatible VRRPv3 agent (needs CAP_NET_ADMIN and CAP_NET_RAW).",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="TOML file with a [vrrp] table")
    p.add_argument("--section", default="vrrp", help="table to read (default: vrrp)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from vrrp.service import run as run_agent

    return run_agent(args.config, args.section, args.log_level)
