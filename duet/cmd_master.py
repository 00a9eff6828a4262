"""`duet master --config FILE`: the API host (with `role = "standby"`, the standby API)."""
from __future__ import annotations

import argparse
import asyncio


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "master",
        help="serve the OpenAI API with the head of the model, streaming to a worker",
        description="Load the head of the model (embedding + layers [0, k)), connect to the "
        "worker and serve the OpenAI API. DUET_MASTER_<FIELD> variables and DUET_API_KEYS "
        "override the file. With role = \"standby\" the /v1 API answers 503 until "
        "POST /admin/vrrp brings a MASTER event (or POST /admin/activate).",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="master TOML file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from master.config import load_master_config

    config = load_master_config(args.config)  # before torch is imported: a bad file fails fast
    from master.main import run as run_master
    asyncio.run(run_master(config, on_ready=lambda url: print(f"duet master: serving {url}",
                                                              flush=True)))
    return 0
