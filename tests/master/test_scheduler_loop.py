"""The pipeline generator's loop with a fake head and a fake worker stream.

The fake worker "samples" the last input token + 1 (the fake head puts token ids into the
hidden states), so every expected output is computable from the prompt.
"""
import asyncio
import time

import numpy as np
import pytest

from engine.sampling_params import SamplingParams
from master.generation import GenerationRequest, PipelineUnavailable, QueueFull, SequenceFailed
from master.pipeline_generator import NOT_ACTIVE, PipelineGenerator
from master.scheduler import SchedulerConfig
from proto import pipeline_pb2 as pb


class FakeHead:
    """Puts token ids into [T, 1] float32 'hidden states'; counts KV like a real stage."""

    kv_capacity_tokens = 100_000
    hidden_size, dtype = 1, "float32"

    def __init__(self):
        self.forwards: list[list[str]] = []
        self.held: dict[str, int] = {}

    def forward(self, chunks, token_ids):
        self.forwards.append([c.seq_id for c in chunks])
        for c in chunks:
            self.held[c.seq_id] = c.end_pos
        data = np.asarray(token_ids, np.float32).tobytes()
        return pb.Tensor(data=data, dtype="float32", shape=[len(token_ids), 1])

    def release(self, ids):
        for seq_id in ids:
            self.held.pop(seq_id, None)

    @property
    def kv_used_tokens(self):
        return sum(self.held.values())

    @property
    def kv_usage(self):
        return self.kv_used_tokens / self.kv_capacity_tokens


class FakeWorker:
    """Answers each StepRequest in order; `gate` (a semaphore) holds replies back on demand."""

    def __init__(self):
        self.up = True
        self.requests: list[pb.StepRequest] = []
        self.held: dict[str, pb.SamplingParams] = {}
        self.fail: set[str] = set()
        self.gate: asyncio.Semaphore | None = None
        self.answered = 0

    async def answer(self, request: pb.StepRequest, replies: asyncio.Queue) -> None:
        if self.gate is not None:
            await self.gate.acquire()
        hidden = np.frombuffer(request.hidden.data, np.float32)
        results, row = [], 0
        for step in request.seqs:
            if step.HasField("params"):
                self.held[step.seq_id] = step.params
            row += step.num_tokens
            if step.seq_id in self.fail:
                self.held.pop(step.seq_id, None)
                error = pb.SeqError(code=8, message="KV cache full")
                results.append(pb.SeqResult(seq_id=step.seq_id, error=error))
            elif step.sample:
                token = int(hidden[row - 1]) + 1
                stopped = token in self.held[step.seq_id].stop_token_ids
                sampled = pb.Sampled(token_id=token, logprob=-0.5, stopped=stopped)
                results.append(pb.SeqResult(seq_id=step.seq_id, sampled=sampled))
        for seq_id in request.release:
            self.held.pop(seq_id, None)
        self.answered += 1
        replies.put_nowait(pb.StepReply(step_id=request.step_id, results=results,
                                        kv_used_tokens=len(self.held), kv_capacity_tokens=100_000))


class FakeStream:
    def __init__(self, worker: FakeWorker):
        self.worker, self.replies, self.tasks = worker, asyncio.Queue(), []

    async def send(self, request):
        self.worker.requests.append(request)
        self.tasks.append(asyncio.create_task(self.worker.answer(request, self.replies)))

    async def recv(self):
        item = await self.replies.get()
        if isinstance(item, Exception):
            raise item
        return item

    def cancel(self):
        for task in self.tasks:
            task.cancel()

    def break_(self, reason):
        self.worker.up = False
        self.worker.held.clear()  # a broken stream frees everything on the worker
        self.replies.put_nowait(PipelineUnavailable(reason))


class FakeClient:
    def __init__(self, worker: FakeWorker):
        self.worker, self.handshake, self.reason, self.stream = worker, None, "connecting", None

    def readiness(self):
        return self.handshake is not None, self.reason

    def max_message_bytes(self):
        return 64 * 2**20

    def mark_down(self, reason):
        self.handshake, self.reason = None, reason

    async def connect_with_backoff(self):
        while not self.worker.up:
            await asyncio.sleep(0.01)
        self.handshake = pb.HandshakeReply(kv_capacity_tokens=100_000)
        self.stream = FakeStream(self.worker)
        return self.stream

    async def close(self):
        pass


@pytest.fixture
async def pipeline():
    head, worker = FakeHead(), FakeWorker()
    gen = PipelineGenerator(head, FakeClient(worker), SchedulerConfig(max_waiting=4),
                            step_timeout_s=5.0)
    gen.start()
    await wait_for(lambda: gen.readiness()[0])
    yield gen, head, worker
    await gen.close()


async def wait_for(cond, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def open_gate(worker):
    for _ in range(1000):
        worker.gate.release()


def request(name, prompt, max_tokens=4, **params):
    return GenerationRequest(name, prompt, SamplingParams(temperature=0, **params), max_tokens)


async def collect(gen, req):
    return [e async for e in gen.generate(req)]


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
