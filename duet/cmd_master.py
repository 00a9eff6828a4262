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
    asyncio.run(_serve(config))
    return 0


async def _serve(config) -> None:
    """The master, with systemd told READY once it listens and its watchdog fed meanwhile."""
    from runtime.gc_freeze import freeze_loaded_objects
    from runtime.sd_notify import supervise
    from master.main import run as run_master

    listening = asyncio.Event()

    def on_ready(url: str) -> None:
        freeze_loaded_objects()  # this process's loaded objects: out of the full GC passes
        print(f"duet master: serving {url}", flush=True)
        listening.set()

    systemd = asyncio.create_task(supervise(listening, f"{config.role} API listening"))
    try:
        await run_master(config, on_ready=on_ready)
    finally:
        systemd.cancel()
