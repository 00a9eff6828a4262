"""The drills' hands on the namespace lab: faults, repairs, and what the hosts look like."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from duet.lab import build
from duet.lab import services as svc
from duet.lab.topology import API_PORT, VIP, LabState, drop_vip, set_link, vip_holders


class LabTarget:
    """A lab brought up by `duet lab up`, found through its run directory."""

    def __init__(self, run_dir: str | Path):
        self.state = LabState.load(run_dir)
        self.url = f"http://{VIP}:{API_PORT}"
        self.model = Path(self.state.model_dir).name

    def start_load(self, out: Path, clients: int, max_tokens: int,
                   module: str = "duet.drill.load", extra: tuple[str, ...] = ()
                   ) -> subprocess.Popen:
        """The clients, in the client namespace (they reach the API only through the VIP)."""
        argv = [sys.executable, "-m", module, "--url", self.url, "--model",
                self.model, "--clients", str(clients), "--max-tokens", str(max_tokens),
                "--out", str(out), *extra]
        return subprocess.Popen(["ip", "netns", "exec", self.state.ns("c"), *argv],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def holders(self) -> list[str]:
        return vip_holders(self.state)

    # --- faults ---------------------------------------------------------------------
    def kill(self, name: str) -> float:
        """SIGKILL, then wait until the process is gone: a restart right after (kill-worker's
        repair) must not find it still exiting and take it for alive."""
        t = svc.signal_service(self.state, name, signal.SIGKILL)
        svc.wait_gone([self.state.services[name].pid], 10.0)
        return t

    def crash(self, host: str) -> float:
        """A host crash: its processes and its kernel stop at once. The namespace's kernel
        lives on, so the link goes down with the processes (nothing answers for the VIP)."""
        t = time.monotonic()
        set_link(self.state, host, False)
        svc.kill_host(self.state, host)
        return t

    def stop_host(self, host: str) -> float:
        """What `systemctl stop` of every duet unit on the host does: SIGTERM, wait."""
        return svc.stop(self.state, svc.HOST_SERVICES[host])

    def cut(self, host: str) -> float:
        t = time.monotonic()
        set_link(self.state, host, False)
        return t

    # --- repairs --------------------------------------------------------------------
    def start_dead(self, host: str) -> float:
        """Start the host's services that are not running (systemd's Restart= would)."""
        t = time.monotonic()
        for name in svc.HOST_SERVICES[host]:
            if not svc.alive(self.state.services[name].pid):
                svc.start(self.state, name)
        return t

    def reconnect(self, host: str) -> float:
        t = time.monotonic()
        set_link(self.state, host, True)
        return t

    def reboot(self, host: str) -> float:
        """After a crash: the host comes back without the VIP it held, then its services."""
        t = time.monotonic()
        drop_vip(self.state, host)
        set_link(self.state, host, True)
        self.start_dead(host)
        return t

    # --- state ----------------------------------------------------------------------
    def wait_healthy(self, timeout_s: float) -> None:
        build.wait_healthy(self.state, timeout_s)

    def wait_vip_on(self, host: str, timeout_s: float) -> None:
        svc.wait_for(f"the VIP on host {host} only", lambda: self.holders() == [host],
                     timeout_s)

    def final_state(self) -> dict:
        report = build.status(Path(self.state.run_dir))
        return {"vip_holders": report["vip_holders"], "healthy": report["healthy"],
                "processes": {name: ("ready" if p.get("ready") else p.get("state")
                                     if p["alive"] else "dead") or "alive"
                              for name, p in report["processes"].items()}}
