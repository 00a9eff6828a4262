"""A lost worker with the fake head and worker (sched_fakes.py): sequences are rebuilt on the
next stream (re-prefilled with their output so far) within recovery_budget_s, and fail with
a clear error and a Retry-After past it."""
import asyncio

import pytest

from engine.sampler import SampleResult
from engine.sampling_params import SamplingParams
from master.generation import GenerationRequest, PipelineUnavailable
from master.pipeline_generator import PipelineGenerator
from master.scheduler import Scheduler, SchedulerConfig
from master.sequence import Sequence
from sched_fakes import FakeClient, FakeHead, FakeWorker, collect, request, wait_for


async def start(budget_s: float) -> tuple[PipelineGenerator, FakeHead, FakeWorker]:
    head, worker = FakeHead(), FakeWorker()
    gen = PipelineGenerator(head, FakeClient(worker), SchedulerConfig(), step_timeout_s=5.0,
                            recovery_budget_s=budget_s)
    gen.start()
    await wait_for(lambda: gen.readiness()[0])
    return gen, head, worker


async def test_a_broken_stream_is_a_pause_and_the_sequence_resumes():
    gen, head, worker = await start(budget_s=5.0)
    worker.gate = asyncio.Semaphore(3)  # three steps answered, then the worker stalls
    running = asyncio.create_task(collect(gen, request("r", [1, 1], max_tokens=6)))
    await wait_for(lambda: worker.answered == 3)
    gen.client.stream.break_("worker at x: UNAVAILABLE: connection reset")
    await wait_for(lambda: not head.held)  # the head's KV is freed for the rebuild
    assert not running.done()
    later = asyncio.create_task(collect(gen, request("new", [7], max_tokens=2)))
    await asyncio.sleep(0.05)
    assert not later.done()  # a new request waits for the worker too, it is not refused
    worker.gate, worker.up = None, True
    assert [e.token_id for e in await running] == [2, 3, 4, 5, 6, 7]
    assert [e.token_id for e in await later] == [8, 9]
    rebuilt = next(s for r in worker.requests[1:] for s in r.seqs
                   if s.seq_id == "r" and s.start_pos == 0)
    assert (rebuilt.start_pos, rebuilt.num_tokens) == (0, 5)  # prompt + 3 outputs again
    assert list(rebuilt.resume_output_ids) == [2, 3, 4] and rebuilt.HasField("params")
    await gen.close()


async def test_past_the_budget_sequences_fail_and_new_requests_get_retry_after():
    gen, head, worker = await start(budget_s=0.3)
    worker.gate = asyncio.Semaphore(1)
    running = asyncio.create_task(collect(gen, request("r", [1], max_tokens=50)))
    await wait_for(lambda: worker.answered == 1)
    gen.client.stream.break_("worker at x: UNAVAILABLE: connection reset")
    with pytest.raises(PipelineUnavailable, match=r"did not come back within 0.3 s") as e:
        await running
    assert e.value.retry_after_s == 1.0
    with pytest.raises(PipelineUnavailable) as e:
        await collect(gen, request("new", [1]))
    assert e.value.retry_after_s == 1.0
    await gen.close()


def test_a_rebuilt_sequence_claims_no_kept_block_and_its_kv_balances_to_zero():
    """The kept prefix blocks went with the worker: the rebuild re-prefills from 0 without
    cached_prefix, keeps its blocks anew, and every reservation and hold comes back."""
    s = Scheduler(SchedulerConfig(kv_block_size=4, max_inflight_batches=1))
    s.set_limits(1000)
    prompt = list(range(1, 13))  # 3 full blocks
    answer_all(s, seq("first", prompt))
    again, other = seq("again", prompt, max_tokens=6), seq("other", [50, 51], max_tokens=6)
    s.add(again), s.add(other)
    step = s.schedule()
    assert again.cached_prefix and again.held_hashes  # it started on kept blocks
    s.postprocess(step, {i.seq.seq_id: SampleResult(9, None) for i in step.seqs})
    held = s.requeue_all()
    assert {"again", "other"} <= set(held)
    s.finish(other, "cancelled")  # a reader left while the worker was away
    s.set_limits(1000)  # the next handshake: an empty prefix cache
    # 12 prompt + 6 output tokens, all its own again: 5 blocks of 4
    assert s.kv.reserved_tokens == 20 and s.kv.prefix.num_blocks == 0
    step = s.schedule()
    (item,) = step.seqs
    assert (item.chunk.start_pos, item.chunk.num_tokens, item.sends_params) == (0, 13, True)
    assert again.cached_prefix == [] and not step.evict
    answer_all(s, again, step)
    assert s.kv.reserved_tokens == 0 and s.kv.prefix.num_blocks == s.kv.prefix.num_idle == 4


def seq(name, prompt, max_tokens=2):
    return Sequence(GenerationRequest(name, prompt, SamplingParams(), max_tokens))


def answer_all(s, target, step=None):
    """Answer steps (token 9 for each sampling row) until `target` finished."""
    if step is None:
        s.add(target)
    while not target.is_finished:
        step = step or s.schedule()
        s.postprocess(step, {i.seq.seq_id: SampleResult(9, None) for i in step.seqs
                             if i.samples})
        step = None
