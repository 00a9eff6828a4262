"""KV is held while a sequence lives and given back on release, stream end, and idle timeout."""
import asyncio
import time

import grpc

from pipeline_driver import IDLE_TIMEOUT_S, StepStream, result_of
from proto import pipeline_pb2 as pb

GREEDY = pb.SamplingParams(temperature=0, logprobs=-1)


def first_step(seq_id: str, tokens: int) -> pb.SeqStep:
    return pb.SeqStep(seq_id=seq_id, start_pos=0, num_tokens=tokens, sample=True, params=GREEDY)


async def prefill(stream: StepStream, head, seq_ids: list[str], tokens: int) -> pb.StepReply:
    chunks = [(s, 0, list(range(100, 100 + tokens))) for s in seq_ids]
    reply = await stream.step([first_step(s, tokens) for s in seq_ids], head.hidden(chunks))
    for s in seq_ids:
        head.release(s)  # the head's own KV is not under test
    return reply


async def kv_used(stream: StepStream) -> int:
    """The worker's KV use, read with an empty step."""
    return (await stream.step([], None)).kv_used_tokens


async def wait_kv_used(stream: StepStream, target: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    used = await kv_used(stream)
    while used != target and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        used = await kv_used(stream)
    return used


async def test_release_frees_kv_and_ends_the_sequence(stream, head):
    baseline = await kv_used(stream)
    reply = await prefill(stream, head, ["r1"], 40)
    assert result_of(reply, "r1").WhichOneof("outcome") == "sampled"
    assert reply.kv_used_tokens >= baseline + 40
    reply = await stream.step([], None, release=("r1",))
    assert reply.kv_used_tokens == baseline
    reply = await stream.step([pb.SeqStep(seq_id="r1", start_pos=40, num_tokens=1, sample=True)],
                              head.hidden([("x", 0, [5])]))
    head.release("x")
    error = result_of(reply, "r1").error
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "released" in error.message


async def test_a_dropped_stream_frees_all_its_sequences(channel, stream, head):
    baseline = await kv_used(stream)
    doomed = StepStream(channel)
    reply = await prefill(doomed, head, ["d1", "d2", "d3"], 20)
    assert reply.kv_used_tokens >= baseline + 60
    doomed.cancel()  # the API's connection breaks
    assert await wait_kv_used(stream, baseline, timeout_s=5) == baseline


async def test_same_ids_on_two_streams_are_two_sequences(channel, stream, head):
    other = StepStream(channel)
    try:
        await prefill(stream, head, ["same"], 8)
        reply = await prefill(other, head, ["same"], 8)  # the standby API reuses an id
        assert result_of(reply, "same").WhichOneof("outcome") == "sampled"
    finally:
        other.cancel()


async def test_idle_sequences_are_released(stream, head):
    baseline = await kv_used(stream)
    await prefill(stream, head, ["idle"], 30)
    assert await wait_kv_used(stream, baseline, timeout_s=IDLE_TIMEOUT_S + 5) == baseline
    reply = await stream.step([pb.SeqStep(seq_id="idle", start_pos=30, num_tokens=1, sample=True)],
                              head.hidden([("x", 0, [5])]))
    head.release("x")
    assert "idle" in result_of(reply, "idle").error.message


async def test_kv_exhaustion_fails_only_the_sequence_that_does_not_fit(stream, head):
    capacity = (await stream.step([], None)).kv_capacity_tokens
    big, small = capacity * 3 // 4, 16
    seqs = [first_step("big", big), first_step("huge", big), first_step("small", small)]
    chunks = [(s.seq_id, 0, [7] * s.num_tokens) for s in seqs]
    reply = await stream.step(seqs, head.hidden(chunks))
    for s in ("big", "huge", "small"):
        head.release(s)
    assert result_of(reply, "big").WhichOneof("outcome") == "sampled"
    assert result_of(reply, "small").WhichOneof("outcome") == "sampled"
    error = result_of(reply, "huge").error
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert "KV cache full" in error.message
    await stream.step([], None, release=("big", "small"))


async def test_health_reports_serving(worker):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(worker.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="duet.pipeline.v1.Pipeline"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
