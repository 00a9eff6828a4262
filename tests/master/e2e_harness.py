"""Real processes for the master's acceptance tests: worker, master, standby, probes.

Each test module starts what it needs through these helpers (one stack a module: e2e_stack)
and stops it; nothing is shared between modules but the read-only tiny checkpoint
(conftest.py). The greedy reference is in e2e_reference.py, namespace requests in e2e_netns.py.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import grpc
import httpx

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
        self._terminating = False

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

    def terminate(self) -> None:
        """SIGTERM without waiting (stop() waits), so that several stop at once."""
        if self.proc.poll() is None and not self._terminating:
            self.proc.send_signal(signal.SIGTERM)
            self._terminating = True

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            if sig != signal.SIGTERM or not self._terminating:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def spawn_worker(tmp: Path, model_dir: Path, k: int, *, port: int | None = None,
                 executor: str = "local", name: str = "worker", netns: str | None = None,
                 **fields) -> tuple[Service, int]:
    """A `duet worker` process, not yet waited for (its log says "worker ready")."""
    port = port or free_port()
    config = dict(model_dir=str(model_dir), layer_start=k, dtype="float32",
                  listen=f"127.0.0.1:{port}", executor=executor, kv_cache_bytes=64 * 2**20)
    config.update(fields)
    toml = tmp / f"{name}.toml"
    toml.write_text(toml_text(config))
    argv = [sys.executable, "-m", "duet.cli", "worker", "--config", str(toml)]
    return Service(name, in_netns(netns, argv) if netns else argv, tmp / f"{name}.log"), port


def start_worker(tmp: Path, model_dir: Path, k: int, **kwargs) -> tuple[Service, int]:
    service, port = spawn_worker(tmp, model_dir, k, **kwargs)
    service.wait_for(r"worker ready")
    return service, port


def spawn_master(tmp: Path, model_dir: Path, k: int, worker_port: int, *,
                 name: str = "master", env: dict | None = None, netns: str | None = None,
                 **fields) -> Service:
    """A `duet master` process, not yet waited for (see master_url)."""
    config = dict(model_dir=str(model_dir), head_layer_end=k, port=0, dtype="float32",
                  worker_address=f"127.0.0.1:{worker_port}", kv_cache_bytes=64 * 2**20,
                  **fields)
    toml = tmp / f"{name}.toml"
    toml.write_text(toml_text(config))
    argv = [sys.executable, "-m", "duet.cli", "master", "--config", str(toml)]
    return Service(name, in_netns(netns, argv) if netns else argv, tmp / f"{name}.log",
                   env=env)


def master_url(service: Service) -> str:
    """The URL a master serves on, once its log says so."""
    return service.wait_for(r"duet master: serving (http://\S+)").group(1)


def start_master(tmp: Path, model_dir: Path, k: int, worker_port: int,
                 **kwargs) -> tuple[Service, str]:
    service = spawn_master(tmp, model_dir, k, worker_port, **kwargs)
    return service, master_url(service)


class E2EStack:
    """A worker (local executor) and the APIs in front of it, for one test module. A test
    that restarts the worker or starts another API does it here, so the teardown stops
    whatever runs by then."""

    def __init__(self, tmp: Path, model: Path, split: int, **worker_fields):
        self.tmp, self.model, self.split = tmp, model, split
        self.services: list[Service] = []  # the APIs
        self.worker, self.port = spawn_worker(tmp, model, split, **worker_fields)
        self.url = self.standby_url = ""

    def restart_worker(self, name: str, **fields) -> None:
        """A new worker on the same port (after the test stopped or killed the old one)."""
        self.worker, _ = start_worker(self.tmp, self.model, self.split, port=self.port,
                                      name=name, **fields)

    def spawn_api(self, name: str, split: int | None = None, **fields) -> Service:
        # An API started with its worker waits for it by itself: retry quickly.
        fields.setdefault("reconnect_max_s", 0.5)
        service = spawn_master(self.tmp, self.model, split or self.split, self.port,
                               name=name, **fields)
        self.services.append(service)
        return service

    def start_api(self, name: str, split: int | None = None, **fields) -> tuple[Service, str]:
        """Another API on the same worker, serving (the test may stop it earlier)."""
        service = self.spawn_api(name, split, **fields)
        return service, master_url(service)

    def stop(self) -> None:
        """Everything at once: each process shuts down by itself (an API drains nothing)."""
        for service in (*self.services, self.worker):
            service.terminate()
        for service in (*reversed(self.services), self.worker):
            service.stop()


@contextlib.contextmanager
def e2e_stack(tmp: Path, model: Path, split: int, *, worker: dict | None = None,
              standby: dict | None = None, **master_fields) -> Iterator[E2EStack]:
    """A worker, a ready master (`.master`, `.url`) and, given `standby` (its fields), a
    standby API on the same worker (`.standby_url`); all start at once (each is a torch
    import and a model load) and are stopped afterwards."""
    stack = E2EStack(tmp, model, split, **(worker or {}))
    try:
        stack.master = stack.spawn_api("master", **master_fields)
        other = None if standby is None else stack.spawn_api("standby", role="standby",
                                                             **standby)
        stack.worker.wait_for(r"worker ready")
        stack.url = master_url(stack.master)
        stack.standby_url = master_url(other) if other is not None else ""
        wait_ready(stack.url)
        yield stack
    finally:
        stack.stop()


@contextlib.contextmanager
def live_pipeline(tmp: Path, model_dir: Path, k: int, **master_fields) -> Iterator[str]:
    """A worker (local executor) and a ready master in front of it; yields the master's URL
    and stops both afterwards."""
    with e2e_stack(tmp, model_dir, k, **master_fields) as stack:
        yield stack.url


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


def in_netns(netns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]
