"""What `duet vrrp` runs: load the config, check privileges, run the agent until a signal."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from runtime.sd_notify import supervise
from vrrp.config import VrrpConfig, load_config

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13


def missing_capabilities(status_text: str | None = None) -> list[str]:
    """Names of the capabilities the agent needs that this process lacks."""
    if status_text is None:
        with open("/proc/self/status") as f:
            status_text = f.read()
    eff = next(int(line.split()[1], 16) for line in status_text.splitlines()
               if line.startswith("CapEff:"))
    return [name for name, bit in (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_NET_RAW", CAP_NET_RAW))
            if not eff >> bit & 1]


async def _serve(cfg: VrrpConfig) -> None:
    from vrrp.agent import Agent  # after the checks: imports pyroute2

    agent = Agent(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.stop)
    systemd = asyncio.create_task(supervise(agent.started, f"VRID {cfg.vrid} running"))
    try:
        await agent.run()
    finally:
        systemd.cancel()


def run(config_path: str, section: str = "vrrp", log_level: str = "WARNING") -> int:
    """The exit code: 2 for a bad config, 1 when the agent cannot run, 0 after a signal."""
    try:
        cfg = load_config(config_path, section)
    except ValueError as exc:
        print(f"duet vrrp: bad config: {exc}", file=sys.stderr)
        return 2
    missing = missing_capabilities()
    if missing:
        print(f"duet vrrp: needs {' and '.join(missing)} (run as root or grant them)",
              file=sys.stderr)
        return 1
    if cfg.realtime_priority:  # timers must fire on time on a busy host
        try:
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(cfg.realtime_priority))
        except OSError as exc:
            print(f"duet vrrp: realtime_priority: {exc.strerror}", file=sys.stderr)
            return 1
    logging.basicConfig(level=log_level.upper(), force=True,
                        format=f"%(asctime)s vrrp[{cfg.vrid}] %(levelname)s %(message)s")
    try:
        asyncio.run(_serve(cfg))
    except ValueError as exc:  # e.g. the interface does not exist or has no address
        print(f"duet vrrp: {exc}", file=sys.stderr)
        return 1
    return 0
