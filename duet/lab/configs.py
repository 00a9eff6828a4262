"""What each lab process reads: a throwaway CA (openssl CLI) and the five TOML files.

Mutual TLS between the APIs and the worker, as deployed: the worker's certificate names
10.99.0.2 (host A dials it across the bridge) and 127.0.0.1 (host B's standby dials it
locally); the master and the standby present client certificates signed by the same CA.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from duet.lab.topology import API_PORT, WORKER_PORT
from vrrp.lab import HOSTS, VIP, toml_value

WORKER_METRICS_PORT = 9400  # each on its host's loopback, as deploy/ sets them
VRRP_METRICS_PORT = 9651


@dataclass(frozen=True)
class LabOptions:
    """Knobs of `duet lab up` that reach the configs."""

    executor: str = "triton"
    standby_mode: str = "hot"  # "hot" | "cold"
    advert_interval_s: float = 0.1
    health_interval_s: float = 0.2  # with fall = 2: a dead API moves the VIP within ~0.5 s
    kv_cache_bytes: int = 32 * 2**20
    torch_threads: int = 1  # five torch processes share one machine


def _openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(d: Path) -> Path:
    """ca.pem, worker.pem/.key, master.pem/.key, standby.pem/.key under d."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=duet-lab-ca", "-keyout", "ca.key", "-out", "ca.pem")
    names = {"worker": f"subjectAltName=IP:{HOSTS['b'][0]},IP:127.0.0.1,DNS:localhost",
             "master": "extendedKeyUsage=clientAuth", "standby": "extendedKeyUsage=clientAuth"}
    for name, ext in names.items():
        _openssl(d, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=duet-lab-{name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr")
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                 "-out", f"{name}.pem")
    return d


def toml(fields: dict, table: str = "") -> str:
    """TOML text of nested dicts (a dict value is a table)."""
    scalars = "".join(f"{k} = {toml_value(v)}\n" for k, v in fields.items()
                      if not isinstance(v, dict))
    tables = "".join(toml(v, f"{table}.{k}" if table else k) for k, v in fields.items()
                     if isinstance(v, dict))
    return (f"[{table}]\n" if table else "") + scalars + tables


def worker_config(run: Path, model: Path, k: int, opt: LabOptions, tls: Path) -> str:
    return toml({"worker": dict(
        model_dir=str(model), layer_start=k, dtype="float32", executor=opt.executor,
        listen=f"0.0.0.0:{WORKER_PORT}", kv_cache_bytes=opt.kv_cache_bytes,
        torch_threads=opt.torch_threads, run_dir=str(run / "triton"),
        tls_cert_file=str(tls / "worker.pem"), tls_key_file=str(tls / "worker.key"),
        tls_client_ca_file=str(tls / "ca.pem"),
        tls_client_names=["duet-lab-master", "duet-lab-standby"],
        metrics_listen=f"127.0.0.1:{WORKER_METRICS_PORT}")})


def api_config(role: str, model: Path, k: int, opt: LabOptions, tls: Path) -> str:
    """The master on A (dials B across the bridge) or the standby on B (dials loopback)."""
    name = "master" if role == "master" else "standby"
    worker_ip = HOSTS["b"][0] if role == "master" else "127.0.0.1"
    fields = dict(model_dir=str(model), host="0.0.0.0", port=API_PORT, head_layer_end=k,
                  dtype="float32", kv_cache_bytes=opt.kv_cache_bytes,
                  worker_address=f"{worker_ip}:{WORKER_PORT}", reconnect_max_s=0.5,
                  # a Triton worker restarting on a busy 2-core VM can take a minute
                  recovery_budget_s=120.0,
                  torch_threads=opt.torch_threads, role=role,
                  tls_ca_file=str(tls / "ca.pem"), tls_cert_file=str(tls / f"{name}.pem"),
                  tls_key_file=str(tls / f"{name}.key"))
    if role == "standby":
        fields["standby_mode"] = opt.standby_mode
    return toml(fields)


def vrrp_config(host: str, run: Path, opt: LabOptions) -> str:
    """A: priority 150; B: 100, and its notify hook (de)activates the standby API. Both track
    their own API's /ready (weight -60: a failing A drops to 90, below B) and start as
    failing (init_fail), so a returning A takes the VIP back only once its API is ready."""
    local_api = f"http://127.0.0.1:{API_PORT}"
    fields = dict(interface="eth0", vrid=51, priority=150 if host == "a" else 100,
                  vips=[f"{VIP}/24"], advert_interval_s=opt.advert_interval_s, preempt=True,
                  status_file=str(run / f"vrrp-{host}.json"), status_interval_s=0.1,
                  realtime_priority=10, garp_repeat_delay_s=1.0, metrics_port=VRRP_METRICS_PORT)
    if host == "b":
        fields["notify_url"] = f"{local_api}/admin/vrrp"
    fields["health"] = dict(url=f"{local_api}/ready", interval_s=opt.health_interval_s,
                            timeout_s=opt.health_interval_s, rise=2, fall=2, weight=-60,
                            init_fail=True)
    return toml({"vrrp": fields})
