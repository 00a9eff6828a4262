"""Real workers for the tests: `duet worker` subprocesses (local and triton executors) over a
tiny qwen2 checkpoint, started once per session, and a head that drives them."""
from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from engine.tiny_model import write_tiny_model
from pipeline_driver import (IDLE_TIMEOUT_S, KV_CACHE_BYTES, MAX_MESSAGE_BYTES, NUM_LAYERS,
                             SPLIT, Head, StepStream, start_worker_process, stop_worker_process,
                             wait_serving, write_config)
from worker.triton_process import free_port
from worker.triton_repo import TritonInstall, TritonNotInstalled

@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    return write_tiny_model("qwen2", tmp_path_factory.mktemp("qwen2"), num_layers=NUM_LAYERS)


@pytest.fixture(scope="session")
def head(ckpt) -> Head:
    return Head(ckpt, SPLIT)


def worker_fields(ckpt: Path, executor: str, **overrides) -> dict:
    fields = dict(model_dir=str(ckpt), layer_start=SPLIT, dtype="float32", device="cpu",
                  kv_cache_bytes=KV_CACHE_BYTES, listen=f"127.0.0.1:{free_port()}",
                  executor=executor, idle_timeout_s=IDLE_TIMEOUT_S, torch_threads=1,
                  max_message_bytes=MAX_MESSAGE_BYTES)
    fields.update(overrides)
    return fields


def triton_available() -> str | None:
    """None when the bundled tritonserver is usable here, else why not."""
    try:
        TritonInstall.find()
    except TritonNotInstalled as e:
        return str(e)
    return None


class WorkerProcess:
    """A `duet worker` child process and its address."""

    def __init__(self, tmp: Path, fields: dict):
        self.address = fields["listen"]
        self.log_path = tmp / "worker.log"
        config = write_config(tmp / "worker.toml", run_dir=str(tmp / "run"), **fields)
        self.proc = start_worker_process(config, self.log_path)
        try:
            wait_serving(self.address, self.proc, self.log_path)
        except BaseException:
            stop_worker_process(self.proc)
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        return stop_worker_process(self.proc)


@pytest.fixture(scope="session")
def local_worker(ckpt, tmp_path_factory):
    worker = WorkerProcess(tmp_path_factory.mktemp("local-worker"), worker_fields(ckpt, "local"))
    yield worker
    assert worker.stop() == 0, worker.log()


@pytest.fixture(scope="session")
def triton_worker(ckpt, tmp_path_factory):
    missing = triton_available()
    if missing:
        pytest.skip(f"tritonserver is not installed: {missing}")
    tmp = tmp_path_factory.mktemp("triton-worker")
    worker = WorkerProcess(tmp, worker_fields(ckpt, "triton"))
    yield worker
    assert worker.stop() == 0, worker.log()
    shutil.rmtree(tmp / "run", ignore_errors=True)


@pytest.fixture(params=["local", pytest.param("triton", marks=pytest.mark.triton)])
def worker(request) -> WorkerProcess:
    """Each test using this runs once per executor."""
    return request.getfixturevalue(f"{request.param}_worker")


@pytest.fixture
async def channel(worker):
    async with grpc.aio.insecure_channel(worker.address) as ch:
        yield ch


@pytest.fixture
async def stream(channel):
    s = StepStream(channel)
    yield s
    s.cancel()
