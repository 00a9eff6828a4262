"""A fake head and a fake worker stream for the pipeline generator's loop tests.

The fake worker "samples" the last input token + 1 (the fake head puts token ids into the
hidden states), so every expected output is computable from the prompt.
"""
import asyncio
import time

import numpy as np

from engine.sampling_params import SamplingParams
from master.generation import GenerationRequest, PipelineUnavailable
from master.head import PendingHidden
from proto import pipeline_pb2 as pb


class FakeHead:
    """Puts token ids into [T, 1] float32 'hidden states'; counts KV like a real stage."""

    kv_capacity_tokens = 100_000
    hidden_size, dtype = 1, "float32"
    vocab_size = 1 << 20

    def __init__(self):
        self.forwards: list[list[str]] = []
        self.held: dict[str, int] = {}

    def forward(self, chunks, token_ids):
        self.forwards.append([c.seq_id for c in chunks])
        for c in chunks:
            self.held[c.seq_id] = c.end_pos
        data = np.asarray(token_ids, np.float32).tobytes()
        return pb.Tensor(data=data, dtype="float32", shape=[len(token_ids), 1])

    def launch(self, chunks, token_ids):
        return PendingHidden(None, self.forward(chunks, token_ids))

    def release(self, ids):
        for seq_id in ids:
            self.held.pop(seq_id, None)

    # prefix caching: the fake worker's handshake has no kv_block_size, so nothing is kept
    def keep_blocks(self, blocks):
        assert not list(blocks)

    def evict(self, hashes):
        assert not list(hashes)

    def attach_prefixes(self, seqs):
        assert not list(seqs)

    def drop_cached(self):
        pass

    kv_cached_tokens = 0

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
