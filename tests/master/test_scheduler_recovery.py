"""A lost worker with the fake head and worker (sched_fakes.py): sequences are rebuilt on the
next stream (re-prefilled with their output so far) within recovery_budget_s, and fail with
a clear error and a Retry-After past it."""
import asyncio

import pytest

from master.generation import PipelineUnavailable
from master.pipeline_generator import PipelineGenerator
from master.scheduler import SchedulerConfig
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
