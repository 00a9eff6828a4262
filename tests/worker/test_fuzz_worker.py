"""Fuzz the worker's Step stream: random bytes, truncated messages and StepRequests with
out-of-range fields, each on a stream of its own. The worker must stay up, and a sequence
decoding on another stream must get exactly the tokens it gets undisturbed.

The local executor (the same TailRunner runs inside Triton); fixed seed, bounded examples.
"""
import math

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline_driver import StepStream, result_of
from proto import pipeline_pb2 as pb

EXAMPLES = 120
HIDDEN = 64  # the tiny qwen2's hidden size
STEP = "/duet.pipeline.v1.Pipeline/Step"
VICTIM = "victim"

INT32 = st.integers(-(2**31), 2**31 - 1)
SMALL = st.integers(-3, 12)
FLOATS = st.floats(width=32) | st.sampled_from([0.0, 1.0, -1.0, math.inf, -math.inf, math.nan])
PARAMS = st.builds(
    pb.SamplingParams, temperature=FLOATS, top_p=FLOATS, top_k=INT32, min_p=FLOATS,
    seed=st.integers(0, 2**64 - 1), presence_penalty=FLOATS, frequency_penalty=FLOATS,
    repetition_penalty=FLOATS, logprobs=INT32 | SMALL,
    stop_token_ids=st.lists(INT32, max_size=3), prompt_token_ids=st.lists(INT32, max_size=3))
SEQS = st.builds(pb.SeqStep, seq_id=st.sampled_from(["a", "b", VICTIM, ""]) | st.text(max_size=4),
                 start_pos=SMALL | st.integers(-(2**63), 2**63 - 1), num_tokens=SMALL | INT32,
                 sample=st.booleans(), params=st.none() | PARAMS)


@st.composite
def tensors(draw) -> pb.Tensor:
    rows = draw(st.integers(0, 6))
    dtype = draw(st.sampled_from(["float32", "float32", "bfloat16", "int8", ""]))
    shape = draw(st.sampled_from([[rows, HIDDEN], [rows], [rows, HIDDEN, 1], [-rows, -HIDDEN]])
                 | st.lists(st.integers(-(2**40), 2**40), max_size=3))
    data = draw(st.binary(min_size=rows * HIDDEN * 4, max_size=rows * HIDDEN * 4) | st.binary(
        max_size=64))
    return pb.Tensor(data=data, dtype=dtype, shape=shape)


REQUESTS = st.builds(pb.StepRequest, step_id=st.integers(0, 2**64 - 1) | st.integers(0, 12),
                     seqs=st.lists(SEQS, max_size=3), hidden=st.none() | tensors(),
                     release=st.lists(st.sampled_from(["a", VICTIM]) | st.text(max_size=3),
                                      max_size=2))


@st.composite
def messages(draw) -> list[bytes]:
    """1-3 raw messages: random bytes, a StepRequest, or a StepRequest cut short."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["bytes", "request", "truncated"]))
        if kind == "bytes":
            out.append(draw(st.binary(max_size=128)))
            continue
        data = draw(REQUESTS).SerializeToString()
        if kind == "truncated" and data:
            data = data[:draw(st.integers(0, len(data) - 1))]
        out.append(data)
    return out


class Victim:
    """A greedy sequence on its own stream; `advance` returns the next token."""

    def __init__(self, channel, head):
        self.stream, self.head, self.pos, self.last = StepStream(channel), head, 0, [42, 7]

    async def advance(self) -> int:
        step = pb.SeqStep(seq_id=VICTIM, start_pos=self.pos, num_tokens=len(self.last),
                          sample=True)
        if self.pos == 0:
            step.params.CopyFrom(pb.SamplingParams(temperature=0, logprobs=-1))
        hidden = self.head.hidden([(VICTIM, self.pos, self.last)])
        result = result_of(await self.stream.step([step], hidden), VICTIM)
        assert result.WhichOneof("outcome") == "sampled", result
        self.pos += len(self.last)
        self.last = [result.sampled.token_id]
        return self.last[0]

    def close(self) -> None:
        self.stream.cancel()
        self.head.release(VICTIM)


async def fuzz_one(channel, raw: list[bytes]) -> None:
    call = channel.stream_stream(STEP, request_serializer=lambda b: b,
                                 response_deserializer=lambda b: b)()
    try:
        for data in raw:
            await call.write(data)
            await call.read()
    except (grpc.aio.AioRpcError, grpc.aio.UsageError):
        pass  # the stream was refused: its business
    finally:
        call.cancel()


async def test_fuzzed_streams_never_disturb_another_stream(local_worker, head):
    examples = []

    @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(messages())
    def collect(raw):
        examples.append(raw)

    collect()  # first: drawing them is slow, and the victim must not sit idle meanwhile
    async with grpc.aio.insecure_channel(local_worker.address) as channel:
        quiet = Victim(channel, head)
        want = [await quiet.advance() for _ in range(EXAMPLES + 1)]
        quiet.close()
        victim = Victim(channel, head)
        got = [await victim.advance()]
        try:
            for raw in examples:
                await fuzz_one(channel, raw)
                got.append(await victim.advance())
        finally:
            victim.close()
    assert got == want[:len(got)]
    assert local_worker.proc.poll() is None, local_worker.log()
