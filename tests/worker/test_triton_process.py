"""The managed tritonserver: restarted when it dies (the worker keeps answering meanwhile),
stopped with the worker, and its Python-backend shared memory removed; and an existing
Triton used through triton_url."""
import asyncio
import os
import shutil
import signal
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pipeline_driver import StepStream, children, result_of, shm_regions_of, worker_fields
from proto import pipeline_pb2 as pb
from worker.config import WorkerConfig
from worker.main import Worker
from worker.triton_process import ManagedTriton
from worker.triton_repo import TritonInstall, write_model_repo

pytestmark = pytest.mark.triton
GREEDY = pb.SamplingParams(temperature=0, logprobs=-1)


def tritonserver_of(worker_pid: int) -> int:
    pids = [pid for pid, name in children(worker_pid) if name == "tritonserver"]
    assert len(pids) == 1, f"expected one tritonserver under {worker_pid}, got {pids}"
    return pids[0]


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever reaps here)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def health_status(channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return (await stub.Check(health_pb2.HealthCheckRequest())).status


async def new_sequence(stream: StepStream, head, seq_id: str) -> pb.SeqResult:
    step = pb.SeqStep(seq_id=seq_id, start_pos=0, num_tokens=1, sample=True, params=GREEDY)
    reply = await stream.step([step], head.hidden([(seq_id, 0, [9])]))
    head.release(seq_id)
    return result_of(reply, seq_id)


async def test_tritonserver_restarts_and_stops_clean(head, own_triton_worker):
    worker = own_triton_worker
    first = tritonserver_of(worker.proc.pid)
    regions = shm_regions_of(first)
    assert regions and all((Path("/dev/shm") / r).exists() for r in regions)
    stubs = [pid for pid, _ in children(first)]
    assert stubs, "the Python backend runs the model in stub processes"
    async with grpc.aio.insecure_channel(worker.address) as channel:
        stream = StepStream(channel)
        assert (await new_sequence(stream, head, "before")).WhichOneof("outcome") == "sampled"
        os.kill(first, signal.SIGKILL)
        # While Triton is down the stream stays open, failures are per sequence, and the
        # health service says NOT_SERVING.
        outcomes, health, deadline = [], set(), time.monotonic() + 120
        while time.monotonic() < deadline:
            result = await new_sequence(stream, head, f"during-{len(outcomes)}")
            outcomes.append(result.WhichOneof("outcome"))
            if outcomes[-1] == "sampled":
                break
            assert result.error.code == grpc.StatusCode.UNAVAILABLE.value[0], result
            health.add(await health_status(channel))
            await asyncio.sleep(0.3)
        assert outcomes[-1] == "sampled", worker.log()
        assert health_pb2.HealthCheckResponse.NOT_SERVING in health
        for _ in range(50):  # the health service catches up within a sweep period
            if await health_status(channel) == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.1)
        assert await health_status(channel) == health_pb2.HealthCheckResponse.SERVING
        reply = await stream.step([pb.SeqStep(seq_id="before", start_pos=1, num_tokens=1,
                                              sample=True)], head.hidden([("x", 0, [9])]))
        head.release("x")
        assert result_of(reply, "before").error.code == grpc.StatusCode.NOT_FOUND.value[0]
        stream.cancel()
    second = tritonserver_of(worker.proc.pid)
    assert second != first
    assert not any((Path("/dev/shm") / r).exists() for r in regions), "shm of the dead server"
    assert not any(running(pid) for pid in stubs), "stubs of the dead server still run"
    regions = shm_regions_of(second)
    assert worker.stop() == 0, worker.log()
    assert not Path(f"/proc/{second}").exists(), "tritonserver outlived the worker"
    assert not any((Path("/dev/shm") / r).exists() for r in regions), "shm left after stop"


async def test_existing_triton_at_triton_url(ckpt, head, tmp_path):
    """The NGC-container path: a Triton the worker did not start, serving the repository
    that `--write-model-repo` writes; the worker only connects to it. That server is also
    started as `triton_server_args` start one: the extra flags on its command line."""
    fields = worker_fields(ckpt, "triton", listen="127.0.0.1:0")
    write_model_repo(WorkerConfig.from_dict(fields, environ={}), tmp_path / "models")
    triton = ManagedTriton(TritonInstall.find(), tmp_path / "models", tmp_path, "duet_tail",
                           server_args=("--exit-timeout-secs=3",))
    await triton.start()
    assert b"--exit-timeout-secs=3" in Path(f"/proc/{triton.proc.pid}/cmdline").read_bytes()
    worker = Worker(WorkerConfig.from_dict({**fields, "triton_url": triton.url}, environ={}))
    try:
        await worker.start()
        assert worker.executor.server is None  # it started no tritonserver of its own
        async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
            stream = StepStream(channel)
            assert (await new_sequence(stream, head, "ext")).WhichOneof("outcome") == "sampled"
            stream.cancel()
    finally:
        await worker.stop(grace_s=0)
        await triton.stop()


def test_worker_exits_1_when_tritonserver_cannot_be_restarted(own_triton_worker):
    """A worker whose Triton keeps failing must not stay up NOT_SERVING for ever: it exits
    non-zero, so `duet serve` (or systemd) restarts it."""
    worker = own_triton_worker
    server = tritonserver_of(worker.proc.pid)
    shutil.rmtree(worker.log_path.parent / "run" / "models")  # every restart fails now
    os.kill(server, signal.SIGKILL)
    assert worker.proc.wait(120) == 1, worker.log()
    assert "could not be restarted 3 times in a row" in worker.log()
