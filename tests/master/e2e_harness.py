"""Real processes for the master's acceptance tests: tiny checkpoint, worker, master, probes.

Each test module starts what it needs through these helpers and stops it; nothing is shared
between modules.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
import httpx
import torch

from engine.batch import SeqChunk, StepBatch
from engine.stage import Stage
from proto import pipeline_pb2 as pb
from proto import pipeline_pb2_grpc as pb_grpc
from runtime.children import free_port

START_TIMEOUT_S = 180.0  # a loaded 2-core CI box starts torch + Triton slowly


def toml_text(fields: dict) -> str:
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + "}"
        return '"' + str(v).replace('"', '\\"') + '"'
    return "".join(f"{k} = {value(v)}\n" for k, v in fields.items())


class Service:
    """A child process whose output goes to a log file we can wait on."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict | None = None):
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout_s: float = START_TIMEOUT_S) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = re.search(pattern, self.log())
            if found:
                return found
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log()}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.name}: no {pattern!r} in {timeout_s} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def start_worker(tmp: Path, model_dir: Path, k: int, *, port: int | None = None,
                 executor: str = "local", name: str = "worker", netns: str | None = None,
                 **fields) -> tuple[Service, int]:
    port = port or free_port()
    config = dict(model_dir=str(model_dir), layer_start=k, dtype="float32",
                  listen=f"127.0.0.1:{port}", executor=executor, kv_cache_bytes=64 * 2**20)
    config.update(fields)
    toml = tmp / f"{name}.toml"
    toml.write_text(toml_text(config))
    argv = [sys.executable, "-m", "duet.cli", "worker", "--config", str(toml)]
    service = Service(name, in_netns(netns, argv) if netns else argv, tmp / f"{name}.log")
    service.wait_for(r"worker ready")
    return service, port


def start_master(tmp: Path, model_dir: Path, k: int, worker_port: int, *,
                 name: str = "master", env: dict | None = None, netns: str | None = None,
                 **fields) -> tuple[Service, str]:
    config = dict(model_dir=str(model_dir), head_layer_end=k, port=0, dtype="float32",
                  worker_address=f"127.0.0.1:{worker_port}", kv_cache_bytes=64 * 2**20,
                  **fields)
    toml = tmp / f"{name}.toml"
    toml.write_text(toml_text(config))
    argv = [sys.executable, "-m", "duet.cli", "master", "--config", str(toml)]
    service = Service(name, in_netns(netns, argv) if netns else argv, tmp / f"{name}.log",
                      env=env)
    url = service.wait_for(r"duet master: serving (http://\S+)").group(1)
    return service, url


@contextlib.contextmanager
def live_pipeline(tmp: Path, model_dir: Path, k: int, **master_fields) -> Iterator[str]:
    """A worker (local executor) and a ready master in front of it; yields the master's URL
    and stops both afterwards."""
    worker, worker_port = start_worker(tmp, model_dir, k)
    try:
        master, url = start_master(tmp, model_dir, k, worker_port, **master_fields)
    except Exception:
        worker.stop()
        raise
    try:
        wait_ready(url)
        yield url
    finally:
        master.stop()
        worker.stop()


def wait_ready(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (r := httpx.get(f"{url}/ready", timeout=5.0)).status_code != 200:
        assert time.monotonic() < deadline, f"/ready stayed {r.status_code}: {r.text}"
        time.sleep(0.1)


def wait_not_ready(url: str, reason_part: str, timeout_s: float = 30.0) -> str:
    """/ready's reason once it is 503 and mentions `reason_part`."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.get(f"{url}/ready", timeout=5.0)
        if r.status_code == 503 and reason_part in r.json()["reason"]:
            return r.json()["reason"]
        assert time.monotonic() < deadline, f"/ready: {r.status_code} {r.text}"
        time.sleep(0.1)


def master_stats(url: str) -> dict:
    return httpx.get(f"{url}/admin/stats", timeout=5.0).json()


def worker_kv_used_tokens(port: int) -> int:
    """Ask the worker directly, on a stream of our own: a step with nothing in it."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.PipelineStub(channel)
        replies = stub.Step(iter([pb.StepRequest(step_id=1)]), timeout=30.0)
        return next(iter(replies)).kv_used_tokens


def wait_kv_free(url: str, worker_port: int, timeout_s: float = 30.0) -> None:
    """Both stages hold no KV: the master's head and the worker's tail (asked directly)."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = master_stats(url)
        worker = worker_kv_used_tokens(worker_port)
        if stats["head_kv_used_tokens"] == 0 and worker == 0 and stats["running"] == 0:
            return
        assert time.monotonic() < deadline, f"KV still held: {stats}, worker {worker}"
        time.sleep(0.1)


class Reference:
    """The engine in-process over all layers: the greedy tokens the API must reproduce."""

    def __init__(self, model_dir: Path, stop_ids: tuple[int, ...]):
        layers = json_layers(model_dir)
        self.stage = Stage.load(str(model_dir), 0, layers, dtype="float32",
                                kv_cache_bytes=16 * 2**20)
        self.stop_ids = set(stop_ids)
        self._count = 0

    def greedy(self, prompt: list[int], max_tokens: int) -> list[int]:
        """Up to max_tokens greedy ids; ends after a stop id (which is included)."""
        self._count += 1
        seq, out, pos, inputs = f"ref{self._count}", [], 0, list(prompt)
        try:
            while len(out) < max_tokens:
                batch = StepBatch((SeqChunk(seq, pos, len(inputs)),))
                hidden = self.stage.forward(batch, torch.tensor(inputs))  # [T, H]
                token = int(self.stage.compute_logits(hidden[-1:]).argmax(-1))
                out.append(token)
                pos, inputs = pos + len(inputs), [token]
                if token in self.stop_ids:
                    break
        finally:
            self.stage.release(seq)
        return out


def json_layers(model_dir: Path) -> int:
    import json

    return json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]


def netns_request(netns: str, method: str, url: str, body: dict | None = None,
                  headers: dict | None = None, timeout_s: float = 30.0) -> tuple[int, dict]:
    """One HTTP request made from inside a network namespace: (status, JSON body or {})."""
    import http.client
    import json
    from urllib.parse import urlsplit

    from vrrp.netns import socket_in_netns

    parts = urlsplit(url)
    sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    sock.connect((parts.hostname, parts.port))
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    conn.sock = sock
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, parts.path, body=payload,
                     headers={"content-type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        text = resp.read()
    finally:
        conn.close()
    try:
        return resp.status, json.loads(text)
    except ValueError:
        return resp.status, {}


def in_netns(netns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]
