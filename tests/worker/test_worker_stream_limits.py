"""Per-stream limits: one stream (a runaway or hostile client) cannot take the KV cache or the
sequence table from another; what it asks beyond its share fails per sequence with
RESOURCE_EXHAUSTED and its stream stays up."""
import grpc
import pytest
import torch

from pipeline_driver import SPLIT, StepStream, result_of
from proto import pipeline_pb2 as pb
from proto import pipeline_pb2_grpc as pb_grpc
from worker.config import WorkerConfig
from worker.main import Worker

CAPACITY_TOKENS = 512  # 256 KiB at 2 layers x 256 B per token (fp32, tiny qwen2)
SHARE_TOKENS = 256  # stream_kv_share 0.5
MAX_SEQS = 8
GREEDY = pb.SamplingParams(temperature=0, logprobs=-1)
CODE = {c.value[0]: c for c in grpc.StatusCode}


@pytest.fixture
async def limited(ckpt):
    config = WorkerConfig(model_dir=str(ckpt), layer_start=SPLIT, dtype="float32",
                          executor="local", kv_cache_bytes=256 * 1024, listen="127.0.0.1:0",
                          stream_kv_share=0.5, stream_max_seqs=MAX_SEQS)
    worker = Worker(config)
    await worker.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{worker.port}") as channel:
        yield channel
    await worker.stop(grace_s=0)


def new_seqs(prefix: str, count: int, num_tokens: int = 1) -> list[pb.SeqStep]:
    return [pb.SeqStep(seq_id=f"{prefix}{i}", start_pos=0, num_tokens=num_tokens, sample=True,
                       params=GREEDY) for i in range(count)]


async def step(stream: StepStream, seqs: list[pb.SeqStep]) -> pb.StepReply:
    rows = sum(s.num_tokens for s in seqs)
    return await stream.step(seqs, torch.randn(rows, 64))


def outcomes(reply: pb.StepReply) -> list[str]:
    return [CODE[r.error.code].name if r.WhichOneof("outcome") == "error" else "sampled"
            for r in reply.results]


async def test_handshake_reports_the_share(limited):
    reply = await pb_grpc.PipelineStub(limited).Handshake(pb.HandshakeRequest())
    assert reply.kv_capacity_tokens == CAPACITY_TOKENS
    assert (reply.stream_kv_tokens, reply.stream_max_seqs) == (SHARE_TOKENS, MAX_SEQS)


async def test_a_greedy_stream_gets_its_share_and_the_other_stream_still_runs(limited):
    greedy, victim = StepStream(limited), StepStream(limited)
    # one-token sequences: each reserves a whole 16-token block
    reply = await step(greedy, new_seqs("g", 20))
    assert outcomes(reply) == ["sampled"] * MAX_SEQS + ["RESOURCE_EXHAUSTED"] * 12
    assert "stream_max_seqs" in reply.results[-1].error.message
    # a sequence growing past the share: 7 blocks of the others + 11 of its own > 16
    reply = await step(greedy, [pb.SeqStep(seq_id="g0", start_pos=1, num_tokens=1, sample=True),
                                pb.SeqStep(seq_id="g1", start_pos=1, num_tokens=160, sample=True)])
    assert outcomes(reply) == ["sampled", "RESOURCE_EXHAUSTED"]
    assert "would hold 288 KV token slots, over its share of 256" in reply.results[1].error.message
    # the other stream can still hold its whole share, in one prompt or many sequences
    reply = await step(victim, new_seqs("v", 1, SHARE_TOKENS))
    assert outcomes(reply) == ["sampled"]
    assert reply.kv_used_tokens == SHARE_TOKENS + 7 * 16  # g1 failed and was released
    reply = await step(victim, new_seqs("w", 1))
    assert outcomes(reply) == ["RESOURCE_EXHAUSTED"]
    # the greedy stream is still up, and released sequences give their share back
    reply = await greedy.step([], None, release=tuple(f"g{i}" for i in range(MAX_SEQS) if i != 1))
    assert reply.kv_used_tokens == SHARE_TOKENS
    assert outcomes(await step(greedy, new_seqs("again", MAX_SEQS))) == ["sampled"] * MAX_SEQS
    greedy.cancel()
    victim.cancel()
