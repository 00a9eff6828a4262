"""A Step stream the worker refuses (still loading, draining) tells the API why, however late
the API's first write comes: the status must not overtake it (gRPC would then report the
write as INTERNAL "Internal error from Core", and the API's log would say nothing useful)."""
import asyncio

import grpc
import pytest

from master.generation import PipelineUnavailable
from master.pipeline_client import StepStream as ApiStepStream
from proto import pipeline_pb2 as pb
from proto import pipeline_pb2_grpc as pb_grpc
from worker.server import PipelineService, make_server


@pytest.fixture
async def loading_worker():
    """A real gRPC server whose executor has not loaded yet (`info` is None)."""
    service = PipelineService(executor=None, max_message_bytes=1 << 20)
    server, _, port = make_server(service, "127.0.0.1:0")
    await server.start()
    try:
        yield service, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@pytest.mark.parametrize("first_write_after_s", [0.0, 0.05, 0.3])
async def test_a_refused_stream_says_why_to_a_late_writer(loading_worker, first_write_after_s):
    _, address = loading_worker
    async with grpc.aio.insecure_channel(address) as channel:
        for _ in range(5):
            call = pb_grpc.PipelineStub(channel).Step()
            await asyncio.sleep(first_write_after_s)  # the API busy elsewhere before writing
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call.write(pb.StepRequest(step_id=1))
                await call.read()
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "still loading" in refused.value.details()


async def test_the_api_names_the_draining_worker_in_its_reason(loading_worker):
    service, address = loading_worker
    service.info = pb.HandshakeReply()  # loaded ...
    service.drain(pb.Drain(reason="SIGTERM"))  # ... and then told to stop
    async with grpc.aio.insecure_channel(address) as channel:
        stream = ApiStepStream(pb_grpc.PipelineStub(channel).Step(), address)
        with pytest.raises(PipelineUnavailable) as refused:
            await stream.send(pb.StepRequest(step_id=1))
            await stream.recv()
    assert f"worker at {address}: UNAVAILABLE: the worker is draining: SIGTERM" in str(
        refused.value)
