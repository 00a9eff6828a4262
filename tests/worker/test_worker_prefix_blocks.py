"""Prefix caching on a live worker: it keeps, attaches and evicts blocks as the API says,
per stream, and a block it does not keep fails only the sequence that asked for it."""
from __future__ import annotations

import grpc

from engine.sampling_params import SamplingParams
from pipeline_driver import StepStream, result_of
from proto import pipeline_pb2 as pb
from proto.convert import params_to_proto

PROMPT = list(range(3, 23))  # 20 tokens: one full block of 16 and 4 more
H = 0xFEED


def first_step(seq_id: str, start: int, prefix: list[int] = ()) -> pb.SeqStep:
    step = pb.SeqStep(seq_id=seq_id, start_pos=start, num_tokens=len(PROMPT) - start, sample=True,
                      cached_prefix=prefix)
    step.params.CopyFrom(params_to_proto(SamplingParams(temperature=0, logprobs=0)))
    return step


async def test_a_kept_block_is_attached_instead_of_recomputed(stream, channel, head):
    kv = head.stage.kv
    a = await stream.step([first_step("a", 0)], head.hidden([("a", 0, PROMPT)]))
    token = result_of(a, "a").sampled.token_id
    kv.cache_block("a", 0, "h")  # the head keeps what the worker is told to keep
    head.release("a")
    keep = pb.StepRequest(step_id=2, release=["a"],
                          cache_blocks=[pb.CacheBlock(seq_id="a", block_index=0, hash=H)])
    stream.step_id = 2
    reply = await stream.send(keep)
    assert reply.kv_used_tokens == 0  # kept and idle: counted as free

    kv.attach("b", ["h"])
    b = await stream.step([first_step("b", 16, [H])], head.hidden([("b", 16, PROMPT[16:])]))
    assert result_of(b, "b").sampled.token_id == token  # same greedy token, 4 rows computed
    assert b.kv_used_tokens == 16 + 16  # the shared block and b's own

    c = await stream.step([first_step("c", 16, [H + 1])], head.hidden([("b", 16, PROMPT[16:])]))
    assert result_of(c, "c").error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert "not cached" in result_of(c, "c").error.message

    other = StepStream(channel)  # another API's stream does not see this one's blocks
    d = await other.step([first_step("d", 16, [H])], head.hidden([("b", 16, PROMPT[16:])]))
    assert result_of(d, "d").error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    other.cancel()

    stream.step_id += 1
    done = await stream.send(pb.StepRequest(step_id=stream.step_id, release=["b"], evict=[H]))
    assert done.kv_used_tokens == 0
    head.release("b")
    kv.evict("h")
