"""The lab's network: a bridge namespace, hosts a and b, client c, the VIP; and its state file.

Addresses copy vrrp/lab.py (and the keepalived captures): A = 10.99.0.1, B = .2, client
= .10, VIP = .100. Names are `<prefix>-<host>`, so several labs can coexist.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vrrp.lab import VIP, build_bridge
from vrrp.netns import run_ip, socket_in_netns

API_PORT = 8000
WORKER_PORT = 50051
STATE_NAME = "lab.json"


@dataclass
class ServiceState:
    """One process of the lab: where it runs and how to start it again."""

    host: str  # "a" or "b"
    argv: list[str]
    log: str
    pid: int = 0


@dataclass
class LabState:
    """Everything `down` needs; written before each step of `up` takes effect."""

    run_dir: str
    prefix: str
    namespaces: list[str] = field(default_factory=list)
    services: dict[str, ServiceState] = field(default_factory=dict)
    model_dir: str = ""
    phase: str = "building"  # building | up

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    @property
    def path(self) -> Path:
        return Path(self.run_dir) / STATE_NAME

    def save(self) -> None:
        tmp = self.path.with_name(f".{STATE_NAME}.tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, run_dir: str | Path) -> LabState:
        path = Path(run_dir) / STATE_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{run_dir}: no lab here (no {STATE_NAME}); "
                             f"start one with `duet lab up`") from None
        services = {k: ServiceState(**v) for k, v in data.pop("services").items()}
        return cls(services=services, **data)


def build_network(state: LabState) -> None:
    """vrrp/lab.py's bridge and namespaces; each namespace is in lab.json before it exists."""
    def created(ns: str) -> None:
        state.namespaces.append(ns)
        state.save()

    build_bridge(state.ns, created)


def existing_namespaces(prefix: str) -> list[str]:
    out = run_ip("netns", "list")
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(f"{prefix}-")]


def pids_in(ns: str) -> list[int]:
    res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in res.stdout.split()] if res.returncode == 0 else []


def has_vip(state: LabState, host: str) -> bool:
    try:
        out = run_ip("-n", state.ns(host), "-4", "addr", "show", "dev", "eth0")
    except RuntimeError:
        return False
    return f" {VIP}/" in out


def links_up(state: LabState) -> set[str]:
    """Hosts whose bridge port is up (a cut or crashed host's VIP reaches nobody)."""
    try:
        out = run_ip("-n", state.ns("br"), "-br", "link", "show")
    except RuntimeError:
        return set()
    return {line.split("@")[0].removeprefix("port-") for line in out.splitlines()
            if line.startswith("port-") and " UP " in f" {line.split()[1]} "}


def vip_holders(state: LabState) -> list[str]:
    """Hosts that have the VIP and can be reached: what the client can end up talking to."""
    up = links_up(state)
    return [h for h in ("a", "b") if h in up and has_vip(state, h)]


def drop_vip(state: LabState, host: str) -> None:
    """What a reboot does to an address the crashed agent had added: it is gone."""
    if has_vip(state, host):
        run_ip("-n", state.ns(host), "addr", "del", f"{VIP}/24", "dev", "eth0")


def set_link(state: LabState, host: str, up: bool) -> None:
    """The host's bridge port down or up: its eth0 loses or regains carrier (a cut cable)."""
    run_ip("-n", state.ns("br"), "link", "set", f"port-{host}", "up" if up else "down")


def http_in(ns: str, ip: str, port: int, method: str, path: str, body: bytes = b"",
            timeout_s: float = 2.0) -> tuple[int, bytes]:
    """One HTTP/1.0 request from inside a namespace; (0, b"") when it cannot connect."""
    head = (f"{method} {path} HTTP/1.0\r\nHost: {ip}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    try:
        with socket_in_netns(ns, socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect((ip, port))
            s.sendall(head + body)
            data = b"".join(iter(lambda: s.recv(65536), b""))
    except OSError:
        return 0, b""
    status_line, _, rest = data.partition(b"\r\n")
    parts = status_line.split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, rest.partition(b"\r\n\r\n")[2]
