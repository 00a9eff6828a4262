"""The lab's processes: start each in its host's namespace, signal it, wait for it.

Every process runs `python -m duet.cli …` through `ip netns exec` (which execs, so the pid we
record is the service's own) in a session of its own, so `duet lab up` can exit and leave
them running; `lab.json` keeps their command lines so a drill can start one again.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from duet.lab.topology import API_PORT, LabState, ServiceState, http_in, pids_in

# name -> host, in start order: the worker first (both APIs dial it), agents last.
SERVICES = {"worker": "b", "standby": "b", "master": "a", "vrrp-b": "b", "vrrp-a": "a"}
HOST_SERVICES = {h: [n for n, host in SERVICES.items() if host == h] for h in ("a", "b")}
STOP_GRACE_S = 15.0


def argv_for(name: str, run: Path) -> list[str]:
    cli = [sys.executable, "-m", "duet.cli"]
    if name.startswith("vrrp"):
        return [*cli, "--log-level", "INFO", "vrrp", "--config", str(run / f"{name}.toml")]
    command = "worker" if name == "worker" else "master"
    return [*cli, command, "--config", str(run / f"{name}.toml")]


def alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by anyone) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def start(state: LabState, name: str) -> ServiceState:
    svc = state.services[name]
    with open(svc.log, "ab") as log:
        proc = subprocess.Popen(["ip", "netns", "exec", state.ns(svc.host), *svc.argv],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    svc.pid = proc.pid
    state.save()
    return svc


def signal_service(state: LabState, name: str, sig: int) -> float:
    """Send `sig`; return the monotonic time it was sent."""
    t = time.monotonic()
    try:
        os.kill(state.services[name].pid, sig)
    except ProcessLookupError:
        pass
    return t


def wait_gone(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(alive(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def stop(state: LabState, names: list[str], sig: int = signal.SIGTERM) -> float:
    """Signal services (graceful by default), SIGKILL what is left after STOP_GRACE_S."""
    t = time.monotonic()
    pids = [state.services[n].pid for n in names if n in state.services]
    for name in names:
        signal_service(state, name, sig)
    if not wait_gone(pids, STOP_GRACE_S):
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        wait_gone(pids, 5.0)
    return t


def kill_host(state: LabState, host: str) -> float:
    """SIGKILL every process in the host's namespace at once: a host crash."""
    t = time.monotonic()
    pids = pids_in(state.ns(host))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_gone(pids, 5.0)
    return t


def api_ready(state: LabState, host: str) -> tuple[int, bytes]:
    return http_in(state.ns(host), "127.0.0.1", API_PORT, "GET", "/ready", timeout_s=1.0)


def log_tail(state: LabState, name: str, lines: int = 30) -> str:
    try:
        text = Path(state.services[name].log).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_for(what: str, predicate, timeout_s: float, state: LabState | None = None,
             watch: tuple[str, ...] = ()) -> None:
    """Poll `predicate` until true; fail early, with its log, when a watched service died."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for name in watch:
            if state is not None and not alive(state.services[name].pid):
                raise RuntimeError(f"lab: {name} exited while waiting for {what}:\n"
                                   f"{log_tail(state, name)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"lab: {what} not within {timeout_s:.0f} s")
        time.sleep(0.1)
