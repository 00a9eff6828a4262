"""The same tokens through the triton executor, the local executor and the engine in-process."""
import grpc
import pytest

from engine.sampling_params import SamplingParams
from proto import pipeline_pb2 as pb
from proto.convert import params_to_proto
from pipeline_driver import StepStream, generate, generate_in_process

PROMPTS = {"a": [151644, 872, 198, 9707, 0], "b": [40, 1079], "c": [3838, 374, 220, 17, 10, 17, 30]}
NEW_TOKENS = 6


async def run_on(address: str, head, params: SamplingParams) -> dict:
    async with grpc.aio.insecure_channel(address) as channel:
        stream = StepStream(channel)
        try:
            return await generate(stream, head, PROMPTS, params, NEW_TOKENS)
        finally:
            stream.cancel()


def assert_same(got: dict, want: dict) -> None:
    for seq_id in PROMPTS:
        assert [t for t, _ in got[seq_id]] == [t for t, _ in want[seq_id]], seq_id
        for (_, lp_got), (_, lp_want) in zip(got[seq_id], want[seq_id]):
            assert lp_got == pytest.approx(lp_want, abs=1e-4), seq_id


@pytest.mark.triton
@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0, logprobs=0),
    SamplingParams(temperature=0.8, top_p=0.9, seed=1234, logprobs=0, repetition_penalty=1.2),
], ids=["greedy", "seeded"])
async def test_triton_local_and_in_process_agree(ckpt, head, local_worker, triton_worker, params):
    reference = generate_in_process(ckpt, PROMPTS, params, NEW_TOKENS)
    local = await run_on(local_worker.address, head, params)
    triton = await run_on(triton_worker.address, head, params)
    assert_same(local, reference)
    assert_same(triton, reference)
    # Not a degenerate model: the prompts do not all produce the same sequence.
    assert len({tuple(t for t, _ in reference[s]) for s in PROMPTS}) > 1


@pytest.mark.triton
async def test_triton_checks_hidden_bytes_that_travel_beside_the_message(head, triton_worker):
    """The hidden states reach the tail model as their own input: a step whose bytes do not
    match its shape fails that step's sequences with the tail's own message, the next runs."""
    params, h = params_to_proto(SamplingParams(temperature=0)), head.hidden_size
    async with grpc.aio.insecure_channel(triton_worker.address) as channel:
        stream = StepStream(channel)
        try:
            seq = pb.SeqStep(seq_id="short", start_pos=0, num_tokens=2, sample=True, params=params)
            bad = pb.Tensor(data=b"\0" * 12, dtype="float32", shape=[2, h])
            reply = await stream.send(pb.StepRequest(step_id=1, seqs=[seq], hidden=bad))
            assert reply.results[0].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert "hidden data is 12 bytes" in reply.results[0].error.message
            seq.seq_id = "fine"
            good = pb.Tensor(data=b"\0" * (2 * h * 4), dtype="float32", shape=[2, h])
            reply = await stream.send(pb.StepRequest(step_id=2, seqs=[seq], hidden=good))
            assert reply.results[0].WhichOneof("outcome") == "sampled"
        finally:
            stream.cancel()
