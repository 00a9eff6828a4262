"""The drills' hands on a real pair: faults through ssh + systemctl, state from the agents'
status files, the APIs' /ready over HTTP, and the clients on this machine.

Needs key-based ssh as a user allowed to run systemctl and ip on both hosts (root, or sudo
without a password: `--ssh-prefix "sudo -n"`); one ssh connection per host is reused
(ControlMaster), so polling the VIP's holder costs a round trip, not a login.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

UNITS = {"a": ("duet-master", "duet-vrrp"), "b": ("duet-worker", "duet-standby", "duet-vrrp")}
SERVICE_HOST = {"master": "a", "worker": "b", "standby": "b"}


@dataclass(frozen=True)
class Pair:
    """Where the two hosts are and how to reach them."""

    host_a: str  # ssh destination of host A ("root@host-a")
    host_b: str
    vip: str
    api_a: str  # http://host-a:8000, for /ready
    api_b: str
    model: str
    port: int = 8000
    interface: str = "eth0"  # host A's interface, for cut-a-link
    cut_s: float = 10.0  # how long a cut link stays down (it comes back by itself)
    status_file: str = "/run/duet-vrrp/vrrp-51.json"
    ssh_prefix: str = ""  # e.g. "sudo -n"


class PairTarget:
    """Same interface as LabTarget (duet/drill/lab_target.py)."""

    def __init__(self, pair: Pair):
        self.pair = pair
        self.url = f"http://{pair.vip}:{pair.port}"
        self.model = pair.model
        self._control = Path(tempfile.mkdtemp(prefix="duet-drill-ssh-"))

    def ssh(self, host: str, command: str, timeout_s: float = 10.0) -> str:
        dest = self.pair.host_a if host == "a" else self.pair.host_b
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ControlMaster=auto", "-o",
                f"ControlPath={self._control}/%C", "-o", "ControlPersist=300",
                "-o", "ConnectTimeout=2", dest, f"{self.pair.ssh_prefix} {command}".strip()]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
        return res.stdout if res.returncode == 0 else ""

    def start_load(self, out: Path, clients: int, max_tokens: int,
                   module: str = "duet.drill.load", extra: tuple[str, ...] = ()
                   ) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", module, "--url", self.url,
                                 "--model", self.model, "--clients", str(clients),
                                 "--max-tokens", str(max_tokens), "--out", str(out), *extra],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def agent_state(self, host: str) -> str:
        """MASTER/BACKUP/FAULT of a running agent; "" when it is not running or unreachable."""
        out = self.ssh(host, f"systemctl is-active -q duet-vrrp && cat {self.pair.status_file}",
                       timeout_s=2.0)
        try:
            return json.loads(out).get("state", "") if out else ""
        except ValueError:
            return ""

    def holders(self) -> list[str]:
        return [h for h in ("a", "b") if self.agent_state(h) == "MASTER"]

    def kill(self, name: str) -> float:
        return self._at(SERVICE_HOST[name], f"systemctl kill -s KILL duet-{name}")

    def crash(self, host: str) -> float:
        return self._at(host, "systemctl kill -s KILL " + " ".join(UNITS[host]))

    def stop_host(self, host: str) -> float:
        return self._at(host, "systemctl stop " + " ".join(reversed(UNITS[host])))

    def cut(self, host: str) -> float:
        """The link goes down and comes back by itself after cut_s (ssh cannot bring it up)."""
        iface, cut_s = self.pair.interface, self.pair.cut_s
        return self._at(host, f"systemd-run --collect sh -c 'ip link set {iface} down; "
                              f"sleep {cut_s}; ip link set {iface} up'")

    def start_dead(self, host: str) -> float:
        return self._at(host, "systemctl start " + " ".join(UNITS[host]))

    def reconnect(self, host: str) -> float:
        t = time.monotonic()
        deadline = t + self.pair.cut_s + 30
        while not self.ssh(host, "true; echo up", timeout_s=3.0) and time.monotonic() < deadline:
            time.sleep(0.5)
        return t

    def reboot(self, host: str) -> float:
        return self.start_dead(host)  # the agent removes a stale VIP when it starts

    def _at(self, host: str, command: str) -> float:
        t = time.monotonic()
        self.ssh(host, command, timeout_s=60.0)
        return t

    def ready(self, host: str) -> bool:
        url = self.pair.api_a if host == "a" else self.pair.api_b
        try:
            return httpx.get(f"{url}/ready", timeout=1.0, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_vip_on(self, host: str, timeout_s: float) -> None:
        self._wait(f"the VIP on host {host} only", lambda: self.holders() == [host], timeout_s)

    def wait_healthy(self, timeout_s: float) -> None:
        self._wait("both APIs ready and the VIP on host A", lambda: self.ready("a") and
                   self.ready("b") and self.holders() == ["a"], timeout_s)

    @staticmethod
    def _wait(what: str, predicate, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"drill: {what} not within {timeout_s:.0f} s")
            time.sleep(0.2)

    def final_state(self) -> dict:
        units = {u: self.ssh(h, f"systemctl is-active {u}").strip() or "unknown"
                 for h, names in UNITS.items() for u in names}
        holders = self.holders()
        healthy = all(v == "active" for v in units.values()) and self.ready("a") and \
            self.ready("b") and len(holders) == 1
        return {"vip_holders": holders, "healthy": healthy, "processes": units}
