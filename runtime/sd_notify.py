"""systemd's readiness and watchdog protocol (sd_notify(3)), spoken over its datagram socket.

The protocol is one `KEY=VALUE` datagram per notification to the AF_UNIX socket named in
$NOTIFY_SOCKET (a leading "@" means the abstract namespace); the watchdog period comes from
$WATCHDOG_USEC (for the process $WATCHDOG_PID, when set). Outside systemd both variables are
absent and every call here does nothing, so the services call it unconditionally. The
well-known libraries are either unmaintained (`sdnotify`) or need libsystemd headers to build
(`systemd-python`); the socket protocol is small enough to speak directly.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("runtime.sd_notify")

WATCHDOG_FRACTION = 0.5  # ping at half the period, as sd_watchdog_enabled(3) advises


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one notification ("READY=1", "WATCHDOG=1", "STATUS=…"); False outside systemd."""
    address = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
    except OSError as e:  # a lost notification must never take the service down
        log.warning("sd_notify %s to %s: %s", state.split("=", 1)[0], address, e)
        return False
    return True


def watchdog_period_s(env: Mapping[str, str] | None = None) -> float:
    """systemd's WatchdogSec for this process in seconds; 0 when there is no watchdog."""
    env = os.environ if env is None else env
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return 0.0
    try:
        return max(0, int(env.get("WATCHDOG_USEC", "0"))) / 1e6
    except ValueError:
        return 0.0


async def watchdog_forever(env: Mapping[str, str] | None = None) -> None:
    """Ping the watchdog from the event loop: a loop that stops turning stops the pings,
    and systemd restarts the service. Returns at once when there is no watchdog."""
    period_s = watchdog_period_s(env)
    if not period_s:
        return
    while True:
        notify("WATCHDOG=1", env)
        await asyncio.sleep(period_s * WATCHDOG_FRACTION)


async def supervise(ready: asyncio.Event, status: str = "") -> None:
    """Ping the watchdog from now on (loading counts too), and say READY=1 once `ready` is
    set. Runs until cancelled, so start it as a task beside the service."""
    watchdog = asyncio.create_task(watchdog_forever())
    try:
        await ready.wait()
        notify("READY=1" + (f"\nSTATUS={status}" if status else ""))
        await watchdog
        await asyncio.Event().wait()  # no watchdog configured: just wait to be cancelled
    finally:
        watchdog.cancel()
