"""Every kind of bad input gets its own clear error, and the worker keeps serving other streams
(and, where the error belongs to sequences, the same stream)."""
import grpc
import pytest
import torch

from pipeline_driver import MAX_MESSAGE_BYTES, StepStream, result_of
from proto import pipeline_pb2 as pb

GREEDY = pb.SamplingParams(temperature=0, logprobs=-1)
CODE = {c.value[0]: c for c in grpc.StatusCode}


class Healthy:
    """A sequence decoding on its own stream; `advance` proves the worker still serves it."""

    def __init__(self, stream: StepStream, head, seq_id: str):
        self.stream, self.head, self.seq_id, self.pos = stream, head, seq_id, 0

    async def advance(self, first: bool = False) -> None:
        step = pb.SeqStep(seq_id=self.seq_id, start_pos=self.pos, num_tokens=1, sample=True)
        if first:
            step.params.CopyFrom(GREEDY)
        reply = await self.stream.step([step], self.head.hidden([(self.seq_id, self.pos, [42])]))
        assert result_of(reply, self.seq_id).WhichOneof("outcome") == "sampled", reply
        self.pos += 1


@pytest.fixture
async def healthy(worker, channel, head):
    """Each test that takes it also proves the worker process outlived the bad input."""
    stream = StepStream(channel)
    seq = Healthy(stream, head, "healthy")
    await seq.advance(first=True)
    yield seq
    head.release("healthy")
    stream.cancel()
    assert worker.proc.poll() is None, worker.log()


def one_seq(seq_id="s", start_pos=0, num_tokens=2, params=GREEDY) -> pb.SeqStep:
    step = pb.SeqStep(seq_id=seq_id, start_pos=start_pos, num_tokens=num_tokens, sample=True)
    if params is not None:
        step.params.CopyFrom(params)
    return step


def rows(n: int, width: int = 64, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, width).to(dtype)


def expect_error(reply: pb.StepReply, seq_id: str, code: grpc.StatusCode, text: str) -> None:
    error = result_of(reply, seq_id).error
    assert CODE[error.code] == code, error
    assert text in error.message


@pytest.mark.parametrize("case, seqs, hidden, code, text", [
    ("wrong shape", [one_seq()], rows(2, 65), grpc.StatusCode.INVALID_ARGUMENT, "hidden shape"),
    ("wrong row count", [one_seq()], rows(3), grpc.StatusCode.INVALID_ARGUMENT, "expected [2, 64]"),
    ("wrong dtype", [one_seq()], rows(2, dtype=torch.bfloat16),
     grpc.StatusCode.INVALID_ARGUMENT, "hidden dtype"),
    ("unknown sequence", [one_seq(params=None)], rows(2), grpc.StatusCode.NOT_FOUND,
     "unknown sequence"),
    ("position gap", [one_seq(start_pos=5)], rows(2), grpc.StatusCode.INVALID_ARGUMENT,
     "position gap"),
    ("bad params", [one_seq(params=pb.SamplingParams(temperature=-1))], rows(2),
     grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
    ("prompt outside vocabulary", [one_seq(params=pb.SamplingParams(prompt_token_ids=[10**9]))],
     rows(2), grpc.StatusCode.INVALID_ARGUMENT, "outside the vocabulary"),
    ("non-finite hidden", [one_seq()], torch.full((2, 64), float("nan")),
     grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinity"),
    ("empty chunk", [one_seq(num_tokens=0)], rows(0), grpc.StatusCode.INVALID_ARGUMENT,
     "num_tokens 0"),
    ("twice in one step", [one_seq(num_tokens=1), one_seq(num_tokens=1)], rows(2),
     grpc.StatusCode.INVALID_ARGUMENT, "twice"),
])
async def test_sequence_errors_keep_both_streams_going(channel, healthy, case, seqs, hidden,
                                                       code, text):
    stream = StepStream(channel)
    reply = await stream.step(seqs, hidden)
    expect_error(reply, "s", code, text)
    await healthy.advance()
    reply = await stream.step([one_seq("t", num_tokens=1)], rows(1))  # the same stream goes on
    assert result_of(reply, "t").WhichOneof("outcome") == "sampled"
    stream.cancel()


async def test_nonfinite_rows_fail_only_their_sequence(channel, healthy):
    """One infinite value fails its sequence (and releases it); a sequence beside it in the same
    step samples what it samples alone, and goes on."""
    good = rows(2)
    bad = rows(2)
    bad[1, 7] = float("inf")
    together = StepStream(channel)
    reply = await together.step([one_seq("bad"), one_seq("good")], torch.cat([bad, good]))
    expect_error(reply, "bad", grpc.StatusCode.INVALID_ARGUMENT, "NaN or infinity")
    alone = StepStream(channel)
    reply_alone = await alone.step([one_seq("good")], good)
    beside, solo = result_of(reply, "good").sampled, result_of(reply_alone, "good").sampled
    assert beside.token_id == solo.token_id
    assert beside.logprob == pytest.approx(solo.logprob, abs=1e-4)
    reply = await together.step([one_seq("good", start_pos=2, num_tokens=1, params=None),
                                 one_seq("bad", start_pos=2, num_tokens=1, params=None)], rows(2))
    assert result_of(reply, "good").WhichOneof("outcome") == "sampled"
    expect_error(reply, "bad", grpc.StatusCode.FAILED_PRECONDITION, "ids cannot be reused")
    await healthy.advance()
    together.cancel()
    alone.cancel()


async def test_garbage_tensor_bytes(channel, healthy):
    stream = StepStream(channel)
    request = pb.StepRequest(step_id=1, seqs=[one_seq()])
    request.hidden.CopyFrom(pb.Tensor(data=b"\x01garbage", dtype="float32", shape=[2, 64]))
    expect_error(await stream.send(request), "s", grpc.StatusCode.INVALID_ARGUMENT, "bytes")
    await healthy.advance()
    stream.cancel()


async def test_params_on_a_running_sequence(channel, healthy):
    stream = StepStream(channel)
    await stream.step([one_seq()], rows(2))
    reply = await stream.step([one_seq(start_pos=2, num_tokens=1)], rows(1))
    expect_error(reply, "s", grpc.StatusCode.INVALID_ARGUMENT, "already running")
    await healthy.advance()
    stream.cancel()


async def test_repeated_step_id_fails_that_steps_sequences(channel, healthy):
    stream = StepStream(channel)
    await stream.step([one_seq()], rows(2))
    stream.step_id -= 1  # send the same step id again
    reply = await stream.step([one_seq(start_pos=2, num_tokens=1, params=None)], rows(1))
    expect_error(reply, "s", grpc.StatusCode.INVALID_ARGUMENT, "step id 1 is not above")
    await healthy.advance()
    reply = await stream.step([one_seq("t", num_tokens=1)], rows(1))
    assert result_of(reply, "t").WhichOneof("outcome") == "sampled"
    stream.cancel()


async def test_oversized_message_ends_only_that_stream(channel, healthy):
    stream = StepStream(channel)
    tokens = MAX_MESSAGE_BYTES // (64 * 4) + 1
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stream.step([one_seq(num_tokens=tokens)], rows(tokens))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await healthy.advance()


async def test_garbage_bytes_end_only_that_stream(channel, healthy):
    raw = channel.stream_stream("/duet.pipeline.v1.Pipeline/Step",
                                request_serializer=lambda b: b,
                                response_deserializer=pb.StepReply.FromString)()
    await raw.write(b"\x0a\xff\xff\xff\xff\x0f not a protobuf")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await raw.read()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a StepRequest" in e.value.details()
    await healthy.advance()



async def test_garbage_handshake_bytes_are_invalid_argument(channel, healthy):
    raw = channel.unary_unary("/duet.pipeline.v1.Pipeline/Handshake",
                              request_serializer=lambda b: b,
                              response_deserializer=pb.HandshakeReply.FromString)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await raw(b"\x0a\xff\xff\xff\xff\x0f not a protobuf")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a HandshakeRequest" in e.value.details()
    await healthy.advance()
