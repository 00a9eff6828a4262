"""Real workers for the tests: `duet worker` subprocesses (local and triton executors) over a
tiny qwen2 checkpoint, started once per session, and a head that drives them."""
from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest

from engine.tiny_model import write_tiny_model
from pipeline_driver import (NUM_LAYERS, SPLIT, TORCH_THREADS, Head, StepStream, WorkerProcess,
                             triton_missing, worker_fields)


@pytest.fixture(scope="session", autouse=True)
def same_threads_as_the_workers():
    """The head and the in-process reference compute with the workers' thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    return write_tiny_model("qwen2", tmp_path_factory.mktemp("qwen2"), num_layers=NUM_LAYERS)


@pytest.fixture(scope="session")
def head(ckpt) -> Head:
    return Head(ckpt, SPLIT)


@pytest.fixture(scope="session")
def local_worker(ckpt, tmp_path_factory):
    worker = WorkerProcess(tmp_path_factory.mktemp("local-worker"), worker_fields(ckpt, "local"))
    yield worker
    assert worker.stop() == 0, worker.log()


@pytest.fixture(scope="session")
def triton_worker(ckpt, tmp_path_factory):
    missing = triton_missing()
    if missing:
        pytest.skip(f"tritonserver is not installed: {missing}")
    tmp = tmp_path_factory.mktemp("triton-worker")
    worker = WorkerProcess(tmp, worker_fields(ckpt, "triton"))
    yield worker
    assert worker.stop() == 0, worker.log()
    shutil.rmtree(tmp / "run", ignore_errors=True)


@pytest.fixture
def own_triton_worker(ckpt, tmp_path):
    """A triton worker for one test that may break it."""
    missing = triton_missing()
    if missing:
        pytest.skip(f"tritonserver is not installed: {missing}")
    worker = WorkerProcess(tmp_path, worker_fields(ckpt, "triton"))
    yield worker
    worker.stop()


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
