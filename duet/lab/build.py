"""Bring the lab up (network, checkpoint, certificates, configs, processes), report on it,
and take it down again from whatever `lab.json` says exists."""
from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

from duet.lab import services as svc
from duet.lab.configs import LabOptions, api_config, make_certs, vrrp_config, worker_config
from duet.lab.topology import (API_PORT, LabState, ServiceState, build_network,
                               existing_namespaces, http_in, pids_in, vip_holders)
from vrrp.lab import HOSTS, VIP
from vrrp.netns import run_ip

TINY_ARCH = "deepseek_v3"


def _checkpoint(run: Path, model: str) -> tuple[Path, int]:
    """(checkpoint folder, split k): the given one, or a tiny one with its SHA256SUMS."""
    from engine.config import ModelConfig
    from engine.manifest import compute_manifest
    from engine.tiny_model import write_tiny_model

    if model:
        path = Path(model).resolve()
    else:
        path = write_tiny_model(TINY_ARCH, run / f"tiny-{TINY_ARCH}")
        compute_manifest(path).write(path)  # so the handshake compares manifests, as deployed
    return path, max(1, ModelConfig.from_dir(path).num_hidden_layers // 2)


def _write_configs(state: LabState, model: Path, k: int, opt: LabOptions) -> None:
    run = Path(state.run_dir)
    tls = make_certs(run / "tls")
    texts = {"worker": worker_config(run, model, k, opt, tls),
             "master": api_config("master", model, k, opt, tls),
             "standby": api_config("standby", model, k, opt, tls),
             "vrrp-a": vrrp_config("a", run, opt), "vrrp-b": vrrp_config("b", run, opt)}
    for name, text in texts.items():
        (run / f"{name}.toml").write_text(text)
        state.services[name] = ServiceState(svc.SERVICES[name], svc.argv_for(name, run),
                                            str(run / f"{name}.log"))
    state.save()


def up(run_dir: Path, prefix: str, model: str, opt: LabOptions, timeout_s: float) -> LabState:
    run_dir.mkdir(parents=True, exist_ok=True)
    state = LabState(str(run_dir.resolve()), prefix)
    state.save()  # first: `down` finds the run even if we die on the next line
    model_dir, k = _checkpoint(run_dir, model)
    state.model_dir = str(model_dir)
    _write_configs(state, model_dir, k, opt)
    build_network(state)
    for name in svc.SERVICES:
        svc.start(state, name)
    wait_healthy(state, timeout_s)
    state.phase = "up"
    state.save()
    return state


def wait_healthy(state: LabState, timeout_s: float) -> None:
    """Every process alive, both APIs ready, A holds the VIP, the client gets /ready via it."""
    names = tuple(svc.SERVICES)
    for host in ("b", "a"):
        svc.wait_for(f"host {host}'s API /ready", lambda h=host: svc.api_ready(state, h)[0] == 200,
                     timeout_s, state, names)
    # Both APIs start failing their health checks; when B's turns ready first, B (100) takes
    # the VIP from an A still at 90, and A takes it back once its own check passes: a request
    # sent meanwhile can be stranded on B. So first both agents at their healthy priority,
    # A MASTER and B BACKUP; then the VIP, seen on A alone.
    svc.wait_for("VRRP settled (A MASTER, B BACKUP, both healthy)", lambda: vrrp_settled(state),
                 timeout_s, state, names)
    svc.wait_for("the VIP on host A only", lambda: vip_holders(state) == ["a"], timeout_s,
                 state, names)
    svc.wait_for("/ready through the VIP", lambda: http_in(
        state.ns("c"), VIP, API_PORT, "GET", "/ready")[0] == 200, timeout_s, state, names)


def down(run_dir: Path, prefix: str) -> str:
    """Stop every process, delete every namespace, remove the run directory."""
    try:
        state = LabState.load(run_dir)
        prefix = state.prefix
    except ValueError:
        state = None
    if state is not None:
        svc.stop(state, [n for n in reversed(svc.SERVICES) if n in state.services])
    namespaces = sorted(set(existing_namespaces(prefix)) |
                        set(state.namespaces if state else ()))
    for ns in namespaces:  # whatever is left in a namespace: SIGKILL
        pids = pids_in(ns)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        svc.wait_gone(pids, 5.0)
        try:
            run_ip("netns", "del", ns)
        except RuntimeError:
            pass
    if (run_dir / "lab.json").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    return f"duet lab down: removed {len(namespaces)} namespaces and {run_dir}"


def _agent_status(state: LabState, host: str) -> dict:
    try:
        return json.loads((Path(state.run_dir) / f"vrrp-{host}.json").read_text())
    except (OSError, ValueError):
        return {}


def vrrp_settled(state: LabState) -> bool:
    """A MASTER and B BACKUP, each at its configured priority (the lab's health weight is
    negative: a failing check lowers it), as their status files say."""
    wanted = {"a": "MASTER", "b": "BACKUP"}
    agents = {host: _agent_status(state, host) for host in wanted}
    return all(st.get("state") == wanted[host] and st.get("priority") == st.get("base_priority")
               for host, st in agents.items())


def status(run_dir: Path) -> dict:
    state = LabState.load(run_dir)
    procs = {}
    for name, s in state.services.items():
        entry = {"host": s.host, "pid": s.pid, "alive": svc.alive(s.pid)}
        if name in ("master", "standby"):
            code, body = svc.api_ready(state, s.host)
            entry["ready"] = code == 200
            entry["reason"] = json.loads(body or b"{}").get("reason", "") if code else "no answer"
        if name.startswith("vrrp"):
            st = _agent_status(state, s.host) if entry["alive"] else {}
            entry.update(state=st.get("state", "dead"), priority=st.get("priority", 0))
        procs[name] = entry
    holders = vip_holders(state)
    healthy = (all(p["alive"] and p.get("ready", True) for p in procs.values())
               and len(holders) == 1)
    return {"run_dir": state.run_dir, "prefix": state.prefix, "phase": state.phase,
            "vip": VIP, "vip_holders": holders, "processes": procs, "healthy": healthy}


def format_status(report: dict) -> str:
    lines = [f"lab {report['prefix']} ({report['phase']}) in {report['run_dir']}",
             f"VIP {report['vip']} held by: {', '.join(report['vip_holders']) or 'nobody'}",
             f"{'process':9} {'host':4} {'pid':>7}  {'alive':5}  state"]
    for name, p in report["processes"].items():
        detail = (f"{p['state']} (priority {p['priority']})" if "state" in p else
                  ("ready" if p.get("ready") else f"not ready: {p.get('reason', '')}")
                  if "ready" in p else "")
        lines.append(f"{name:9} {p['host']:4} {p['pid']:>7}  {'yes' if p['alive'] else 'NO':5}"
                     f"  {detail}")
    lines.append("healthy" if report["healthy"] else "NOT healthy")
    return "\n".join(lines)


def announce(state: LabState) -> str:
    model = Path(state.model_dir).name
    body = ('{"model": "%s", "messages": [{"role": "user", "content": "Hello"}], '
            '"max_tokens": 16}' % model)
    hosts = ", ".join(f"{h} = {ip} (netns {state.ns(h)})" for h, (ip, _) in HOSTS.items())
    return (f"duet lab up: {hosts}; VIP {VIP} on host a\n"
            f"  ip netns exec {state.ns('c')} curl -s http://{VIP}:{API_PORT}/v1/chat/completions"
            f" -H 'content-type: application/json' -d '{body}'\n"
            f"  duet lab status --dir {state.run_dir}; duet drill crash-a --lab-dir "
            f"{state.run_dir}; duet lab down --dir {state.run_dir}")
