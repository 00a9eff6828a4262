"""The pipeline generator's loop with a fake head and a fake worker stream (sched_fakes.py):
overlap of head and worker, cancellation, failures, the watchdog, 429 and the standby."""
import asyncio
import time

import pytest

from master.generation import PipelineUnavailable, QueueFull, SequenceFailed
from master.pipeline_generator import NOT_ACTIVE, PipelineGenerator
from master.scheduler import SchedulerConfig
from sched_fakes import FakeClient, FakeHead, FakeWorker, collect, open_gate, request, wait_for


@pytest.fixture
async def pipeline():
    head, worker = FakeHead(), FakeWorker()
    gen = PipelineGenerator(head, FakeClient(worker), SchedulerConfig(max_waiting=4),
                            step_timeout_s=5.0)
    gen.start()
    await wait_for(lambda: gen.readiness()[0])
    yield gen, head, worker
    await gen.close()


async def test_tokens_stream_with_length_and_stop_finish_reasons(pipeline):
    gen, head, worker = pipeline
    events = await collect(gen, request("a", [1, 2, 3], max_tokens=4))
    assert [e.token_id for e in events] == [4, 5, 6, 7]
    assert [e.finish_reason for e in events] == [None, None, None, "length"]
    events = await collect(gen, request("b", [1, 2, 3], max_tokens=10, stop_token_ids=(6,)))
    assert [e.token_id for e in events] == [4, 5, 6]
    assert events[-1].finish_reason == "stop"
    await wait_for(lambda: not worker.held and not head.held)


async def test_head_computes_the_next_batch_while_the_worker_holds_one(pipeline):
    gen, head, worker = pipeline
    worker.gate = asyncio.Semaphore(0)  # the worker answers nothing until told
    tasks = [asyncio.create_task(collect(gen, request(f"s{i}", [10 * i + 1], 3)))
             for i in range(4)]
    await wait_for(lambda: len(head.forwards) == 2)
    await asyncio.sleep(0.05)
    assert len(head.forwards) == 2 and worker.answered == 0  # two in flight, no third
    a, b = (set(f) for f in head.forwards)
    assert a and b and not a & b
    worker.gate.release()  # A comes back: its sequences go again while B is on the worker
    await wait_for(lambda: len(head.forwards) == 3)
    assert set(head.forwards[2]) == a and worker.answered == 1
    open_gate(worker)
    results = await asyncio.gather(*tasks)
    for i, events in enumerate(results):
        assert [e.token_id for e in events] == [10 * i + 2, 10 * i + 3, 10 * i + 4]


async def test_closing_the_iterator_releases_on_both_stages_within_one_step(pipeline):
    gen, head, worker = pipeline
    other = asyncio.create_task(collect(gen, request("other", [100], max_tokens=30)))
    stream = gen.generate(request("gone", [1, 2], max_tokens=1000))
    for _ in range(3):
        await stream.__anext__()
    sent_before = len(worker.requests)
    await stream.aclose()
    await wait_for(lambda: "gone" not in worker.held and "gone" not in head.held)
    after = worker.requests[sent_before:]
    released_at = next(i for i, r in enumerate(after) if "gone" in r.release)
    assert released_at <= 1  # the next step, or the one after a forward already under way
    assert sum(any(s.seq_id == "gone" for s in r.seqs) for r in after) <= 1
    assert len(await other) == 30
    await wait_for(lambda: not worker.held and not head.held)


async def test_a_worker_error_fails_only_that_sequence(pipeline):
    gen, head, worker = pipeline
    worker.fail.add("bad")
    good = asyncio.create_task(collect(gen, request("good", [1], max_tokens=5)))
    with pytest.raises(SequenceFailed) as e:
        await collect(gen, request("bad", [1], max_tokens=5))
    assert e.value.code == "RESOURCE_EXHAUSTED" and "KV cache full" in str(e.value)
    assert [ev.token_id for ev in await good] == [2, 3, 4, 5, 6]
    await wait_for(lambda: not head.held)


async def test_worker_gone_fails_fast_then_reconnects(pipeline):
    gen, head, worker = pipeline
    worker.gate = asyncio.Semaphore(0)
    running = asyncio.create_task(collect(gen, request("r", [1], max_tokens=50)))
    await wait_for(lambda: head.forwards)
    started = time.monotonic()
    gen.client.stream.break_("worker at x: UNAVAILABLE: connection reset")
    with pytest.raises(PipelineUnavailable, match="connection reset"):
        await running
    assert time.monotonic() - started < 1.0
    ready, reason = gen.readiness()
    assert not ready and "connection reset" in reason
    with pytest.raises(PipelineUnavailable):
        await collect(gen, request("new", [1]))
    await wait_for(lambda: not head.held)
    worker.gate, worker.up = None, True
    await wait_for(lambda: gen.readiness()[0])
    assert [e.token_id for e in await collect(gen, request("again", [5], 2))] == [6, 7]


async def test_unanswered_step_trips_the_watchdog():
    head, worker = FakeHead(), FakeWorker()
    gen = PipelineGenerator(head, FakeClient(worker), SchedulerConfig(), step_timeout_s=0.2)
    gen.start()
    await wait_for(lambda: gen.readiness()[0])
    worker.gate = asyncio.Semaphore(0)
    with pytest.raises(PipelineUnavailable, match="did not answer step"):
        await collect(gen, request("stuck", [1]))
    await gen.close()


async def test_full_queue_and_inactive_standby_are_refused(pipeline):
    gen, head, worker = pipeline
    worker.gate = asyncio.Semaphore(0)
    gen.scheduler.config = SchedulerConfig(max_num_seqs=1, max_waiting=1)
    first = asyncio.create_task(collect(gen, request("first", [1], 3)))
    await wait_for(lambda: head.forwards)
    queued = asyncio.create_task(collect(gen, request("queued", [1], 3)))
    await wait_for(lambda: gen.scheduler.waiting)
    with pytest.raises(QueueFull):
        await collect(gen, request("third", [1], 3))
    gen.set_active(False)
    with pytest.raises(PipelineUnavailable, match="standby API not active"):
        await collect(gen, request("standby", [1], 3))
    assert gen.readiness() == (True, "ready; " + NOT_ACTIVE)  # /ready: it could serve
    gen.set_active(True)
    open_gate(worker)
    assert len(await first) == 3 and len(await queued) == 3


async def test_a_failed_head_forward_fails_its_batch_and_the_loop_goes_on(pipeline):
    gen, head, worker = pipeline
    forward = head.forward

    def broken(chunks, token_ids):
        if any(c.seq_id == "doomed" for c in chunks):
            raise RuntimeError("device lost")
        return forward(chunks, token_ids)

    head.forward = broken
    with pytest.raises(SequenceFailed, match="device lost") as e:
        await collect(gen, request("doomed", [1]))
    assert e.value.code == "INTERNAL"
    assert "doomed" not in worker.held  # it never reached the worker
    assert [ev.token_id for ev in await collect(gen, request("fine", [3], 2))] == [4, 5]


@pytest.mark.parametrize("bad", [dict(top_k=2**31), dict(stop_token_ids=(2**31,)),
                                 dict(prompt=[2**40]), dict(prompt=[-1]),
                                 dict(repetition_penalty=1e39), dict(seed=2**64)])
async def test_a_request_the_wire_cannot_carry_fails_alone(pipeline, bad):
    """Issue 8, finding 1: top_k = 2**31 broke the step message, and with it every stream."""
    import dataclasses

    gen, head, worker = pipeline
    good = asyncio.create_task(collect(gen, request("good", [1], max_tokens=5)))
    bad = dict(bad)
    req = request("bad", bad.pop("prompt", [1]), max_tokens=5)
    req = dataclasses.replace(req, params=dataclasses.replace(req.params, **bad))
    with pytest.raises(SequenceFailed) as e:
        await collect(gen, req)
    assert e.value.code == "INVALID_ARGUMENT"
    assert [ev.token_id for ev in await good] == [2, 3, 4, 5, 6]
    assert gen.readiness()[0]
