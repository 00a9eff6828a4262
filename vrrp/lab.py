"""A namespace lab for drills, tests and the bench: two agents and a client on a bridge.

Each host is a network namespace with `eth0` on a bridge that lives in a namespace of its
own, so nothing touches the root namespace. Addressing copies the keepalived captures in
shared/vectors/vrrp: A = 10.99.0.1 (02:99:00:00:00:01), B = .2, client = .10, VIP = .100.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vrrp.netns import Sniffer, run_ip, socket_in_netns

HOSTS = {"a": ("10.99.0.1", "02:99:00:00:00:01"), "b": ("10.99.0.2", "02:99:00:00:00:02"),
         "c": ("10.99.0.10", "02:99:00:00:00:10")}
VIP = "10.99.0.100"
WEB_PORT = 8080
_serial = itertools.count()


def wait_until(predicate, timeout_s: float, poll_s: float = 0.005):
    """Poll until predicate() is truthy; return its value, or raise TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s} s")
        time.sleep(poll_s)


def build_bridge(ns_of: Callable[[str], str], created: Callable[[str], None]) -> None:
    """Namespace `ns_of("br")` with a bridge, and one namespace per host with `eth0` on it.
    `created(ns)` is called before each namespace is made, so a caller can record it first
    and remove it even if this fails half-way."""
    br = ns_of("br")
    for ns in (br, *(ns_of(h) for h in HOSTS)):
        created(ns)
        run_ip("netns", "add", ns)
        run_ip("-n", ns, "link", "set", "lo", "up")
    run_ip("-n", br, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
    run_ip("-n", br, "link", "set", "br0", "up")
    for host, (ip, mac) in HOSTS.items():
        ns = ns_of(host)
        run_ip("-n", br, "link", "add", "name", f"port-{host}", "type", "veth",
               "peer", "name", "eth0", "netns", ns)
        run_ip("-n", br, "link", "set", f"port-{host}", "master", "br0", "up")
        run_ip("-n", ns, "link", "set", "eth0", "address", mac, "up")
        run_ip("-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")


@dataclass
class AgentProc:
    """A running `duet vrrp` inside one namespace."""

    name: str
    proc: subprocess.Popen
    status_file: Path
    log_file: Path

    def status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}

    def kill(self, sig: int = signal.SIGKILL) -> float:
        """Signal the agent; return the monotonic time of the kill."""
        t = time.monotonic()
        self.proc.send_signal(sig)
        return t

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


class Lab:
    """Bridge + namespaces a, b (agents) and c (client); close() removes everything."""

    def __init__(self, tag: str = ""):
        self.prefix = tag or f"vr{os.getpid()}x{next(_serial)}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        self.agents: dict[str, AgentProc] = {}
        self._procs: list[subprocess.Popen] = []
        self.namespaces: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def _build(self) -> None:
        build_bridge(self.ns, self.namespaces.append)

    def start_web(self, host: str) -> Path:
        """A web server in `host` answering /ready (while the file exists; `draining` next to
        it answers as a draining API) and /whoami (vrrp/lab_web.py)."""
        root = self.dir / f"web-{host}"
        root.mkdir(exist_ok=True)
        (root / "ready").write_text("ok\n")
        (root / "whoami").write_text(host)
        self._procs.append(subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), sys.executable, "-m", "vrrp.lab_web",
             str(WEB_PORT), str(root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_until(lambda: self.http_get(host, "127.0.0.1", "/whoami") == host, 10, 0.05)
        return root / "ready"

    def agent_config(self, host: str, **overrides) -> str:
        settings = {"interface": "eth0", "vrid": 51, "priority": 150 if host == "a" else 100,
                    "vips": [f"{VIP}/24"], "advert_interval_s": 0.1,
                    "status_file": str(self.dir / f"status-{host}.json"),
                    "status_interval_s": 0.1, "realtime_priority": 10}
        settings.update(overrides)
        return "[vrrp]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items()
                                    if not isinstance(v, dict)) + "".join(
            f"[vrrp.{k}]\n" + "".join(f"{kk} = {toml_value(vv)}\n" for kk, vv in v.items())
            for k, v in settings.items() if isinstance(v, dict))

    def start_agent(self, host: str, wait_state: str | None = "", **overrides) -> AgentProc:
        """Start an agent; by default wait until it has left INITIALIZE."""
        cfg = self.dir / f"agent-{host}.toml"
        cfg.write_text(self.agent_config(host, **overrides))
        status_file = self.dir / f"status-{host}.json"
        status_file.unlink(missing_ok=True)
        log_file = self.dir / f"agent-{host}.log"
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(host), sys.executable, "-m", "duet.cli",
             "--log-level", "INFO", "vrrp", "--config", str(cfg)],
            stdout=log_file.open("a"), stderr=subprocess.STDOUT)
        agent = self.agents[host] = AgentProc(host, proc, status_file, log_file)
        if wait_state is not None:
            states = (wait_state,) if wait_state else ("BACKUP", "MASTER")
            wait_until(lambda: agent.status().get("state") in states or proc.poll() is not None,
                       15, 0.02)
            if proc.poll() is not None:
                raise RuntimeError(f"agent {host} exited {proc.returncode}:\n{agent.log()}")
        return agent

    def has_vip(self, host: str) -> bool:
        out = run_ip("-n", self.ns(host), "-4", "addr", "show", "dev", "eth0")
        return f" {VIP}/" in out

    def neigh_mac(self, host: str, ip: str = VIP) -> str:
        out = run_ip("-n", self.ns(host), "neigh", "show", ip, "dev", "eth0").split()
        return out[out.index("lladdr") + 1] if "lladdr" in out else ""

    def isolate(self, host: str, on: bool) -> None:
        """Port isolation on the bridge: isolated ports cannot talk to each other."""
        subprocess.run(["ip", "netns", "exec", self.ns("br"), "bridge", "link", "set", "dev",
                        f"port-{host}", "isolated", "on" if on else "off"], check=True)

    def port(self, host: str, up: bool) -> None:
        """Take the host's bridge port down or up: its eth0 loses or regains carrier."""
        run_ip("-n", self.ns("br"), "link", "set", f"port-{host}", "up" if up else "down")

    def sniffer(self, host: str = "c") -> Sniffer:
        return Sniffer(self.ns(host), "eth0")

    def http_get(self, host: str, ip: str, path: str, timeout_s: float = 1.0,
                 port: int = WEB_PORT) -> str:
        """GET from inside `host`'s namespace; '' on any failure."""
        import socket

        try:
            with socket_in_netns(self.ns(host), socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(timeout_s)
                s.connect((ip, port))
                s.sendall(f"GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
                data = b"".join(iter(lambda: s.recv(4096), b""))
        except OSError:
            return ""
        head, _, body = data.partition(b"\r\n\r\n")
        return body.decode() if b" 200 " in head.split(b"\r\n")[0] else ""

    def close(self) -> None:
        for proc in [a.proc for a in self.agents.values()] + self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for ns in self.namespaces:
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)
        self.namespaces.clear()


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)
