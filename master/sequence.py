"""Per-request state on the master: one plain object with a status enum (nano-vllm style)."""
from __future__ import annotations

import asyncio
import time
from enum import Enum, auto

from master.generation import GenerationRequest, TokenEvent


class SequenceStatus(Enum):
    WAITING = auto()  # queued, holds no KV yet
    RUNNING = auto()  # admitted: KV reserved on both stages, steps being scheduled
    FINISHED = auto()  # stop, length, cancelled or failed; KV released or about to be


class Sequence:
    """One sequence from enqueue to release: its tokens, progress and outbox of events."""

    def __init__(self, request: GenerationRequest):
        self.seq_id = request.request_id
        self.params = request.params
        self.max_tokens = request.max_tokens
        self.token_ids = list(request.prompt_token_ids)  # prompt, then every sampled token
        self.num_prompt_tokens = len(self.token_ids)
        self.status = SequenceStatus.WAITING
        # Tokens both stages hold KV for: positions [0, num_computed_tokens) went through.
        self.num_computed_tokens = 0
        self.in_flight = False  # in a micro-batch the worker has not answered yet
        self.params_sent = False  # the worker holds it (has its params); only the Scheduler sets it
        self.kv_reserved_tokens = 0  # worst-case KV of its own, beyond the kept blocks it holds
        # Prefix caching (master/prefix_cache.py): hashes of its full blocks so far, the kept
        # blocks it started on (sent with its first step), every kept block it holds.
        self.block_hashes: list[int] = []
        self.cached_prefix: list[int] = []
        self.held_hashes: list[int] = []
        self.num_kept_blocks = 0  # its blocks [0, n) are kept or were considered for keeping
        # Resumable streams (worker/orphans.py): the key the worker keeps it under when our
        # stream breaks; whether to ask the worker for it first (adopt); the positions the
        # worker holds KV for after an adoption (the head rebuilds them without sending).
        self.resume_key = request.resume_key
        self.adopting = request.adopt and bool(request.resume_key)
        self.adopted = False
        self.worker_pos = 0
        self.finish_reason: str | None = None  # "stop", "length", "cancelled", "failed"
        self.arrival_s = time.monotonic()
        # TokenEvent, then an Exception or nothing once finished; read by generate().
        self.outbox: asyncio.Queue[TokenEvent | BaseException] = asyncio.Queue()
        # Sampled tokens not yet in the outbox: the pipeline driver hands them over once the
        # next step is on its way (Scheduler.deliver), so the readers' SSE work overlaps the
        # worker's step instead of delaying the launch of the next one.
        self.held: list[TokenEvent] = []

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed_tokens < self.num_prompt_tokens

    @property
    def max_len(self) -> int:
        """The most positions this sequence can ever occupy in the KV cache."""
        return self.num_prompt_tokens + self.max_tokens

    def pending_tokens(self) -> int:
        """Tokens known to the master but not yet fed through the head."""
        return len(self.token_ids) - self.num_computed_tokens

    def append_token(self, event: TokenEvent) -> None:
        """Record a sampled token; `deliver` hands it to the reader."""
        self.token_ids.append(event.token_id)
        self.held.append(event)

    def deliver(self) -> None:
        """Hand the held tokens to the reader, in order."""
        for event in self.held:
            self.outbox.put_nowait(event)
        self.held.clear()

    def finish(self, reason: str, error: BaseException | None = None) -> None:
        """Mark finished (the scheduler's `finish` does the bookkeeping); errors go to the reader."""
        if self.is_finished:
            return
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
        if error is not None:
            self.deliver()  # the tokens sampled before it come first
            self.outbox.put_nowait(error)

    def __repr__(self) -> str:
        return (
            f"Sequence({self.seq_id!r}, {self.status.name}, prompt={self.num_prompt_tokens}, "
            f"out={self.num_output_tokens}, computed={self.num_computed_tokens})"
        )
