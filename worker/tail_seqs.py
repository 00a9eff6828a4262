"""The tail's sequence table: which sequences live on which API stream, their KV reservations
against the stream's quota, their kept prefix blocks, and why recently ended ids ended.

The step runner (worker/tail.py) asks it to admit a step's sequence and to release what ended;
every check that refuses one sequence (not the whole step) raises SeqFailed here."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import grpc

from engine.constraint import ConstraintError
from engine.errors import KVCacheFull
from engine.guide import Guide, GuideFactory
from engine.sampler import SamplerState
from proto import pipeline_pb2 as pb
from proto.convert import WireError, params_from_proto
from worker.prefix_blocks import StreamBlocks
from worker.stream_quota import StreamQuota, StreamQuotaExceeded

TOMBSTONES_PER_STREAM = 4096  # recently ended ids remembered per stream, for clear errors


@dataclass
class TailSeq:
    """A live sequence: its KV key, owner stream, sampler state and where it continues."""

    key: str  # "<stream>/<seq_id>": two APIs may use the same seq_id
    stream: str
    seq_id: str
    sampler: SamplerState
    next_pos: int = 0
    touched_s: float = 0.0
    kept_tokens: int = 0  # of [0, next_pos), in blocks kept for prefix caching (counted once)


class SeqFailed(Exception):
    """One sequence cannot run this step; it is released and its result carries the error."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


class SeqTable:
    """Live sequences per stream over the tail stage's KV cache."""

    def __init__(self, stage, *, stream_kv_share: float, stream_max_seqs: int,
                 guides: GuideFactory | None):
        self.stage = stage
        self.guides = guides  # compiles structured-output constraints; None: refused
        self.seqs: dict[str, TailSeq] = {}
        self.ended: dict[str, OrderedDict[str, str]] = {}  # stream -> seq_id -> why it ended
        self.quota = StreamQuota(stage.kv.capacity_tokens, stage.kv.block_size,
                                 stream_kv_share, stream_max_seqs)
        self.blocks = StreamBlocks(stage.kv)

    def apply_cache_ops(self, stream: str, request: pb.StepRequest, release: list[str]) -> None:
        """Keep, release (what the step does not run), evict: the API applied the same to
        its head, in this order, before this step."""
        for c in request.cache_blocks:
            seq = self.seqs.get(f"{stream}/{c.seq_id}")
            if seq is not None and self.blocks.keep(stream, seq.key, c.block_index, c.hash):
                seq.kept_tokens += self.stage.kv.block_size
                self.quota.record(stream, seq.key, seq.next_pos - seq.kept_tokens)
        for seq_id in release:
            self.release(stream, seq_id, "released")
        for h in request.evict:
            self.blocks.evict(stream, h)
        self.quota.set_kept(stream, self.blocks.kept_tokens(stream))

    def admit(self, stream: str, seq_step: pb.SeqStep) -> TailSeq:
        """The sequence this step continues (or starts), with KV reserved for its tokens."""
        key = f"{stream}/{seq_step.seq_id}"
        seq = self.seqs.get(key)
        if seq is None:
            seq = self._new_seq(stream, key, seq_step)
        elif seq_step.HasField("params"):
            raise SeqFailed(grpc.StatusCode.INVALID_ARGUMENT,
                            f"sequence {seq_step.seq_id!r} is already running; "
                            "params belong on its first step only")
        expected = seq.next_pos or len(seq_step.cached_prefix) * self.stage.kv.block_size
        if seq_step.start_pos != expected:
            raise SeqFailed(grpc.StatusCode.INVALID_ARGUMENT,
                            f"position gap in sequence {seq_step.seq_id!r}: expected start_pos "
                            f"{expected}, got {seq_step.start_pos}")
        end_pos = seq_step.start_pos + seq_step.num_tokens
        if seq_step.cached_prefix and key not in self.seqs:
            self._attach(stream, seq, list(seq_step.cached_prefix))
        try:
            self.quota.check(stream, key, end_pos - seq.kept_tokens)
            self.stage.kv.reserve(key, end_pos)
        except (KVCacheFull, StreamQuotaExceeded) as e:
            self.stage.release(key)  # the blocks it attached
            raise SeqFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None
        self.quota.record(stream, key, end_pos - seq.kept_tokens)
        self.seqs[key] = seq
        return seq

    def _attach(self, stream: str, seq: TailSeq, hashes: list[int]) -> None:
        """A new sequence starts on the kept blocks the API named."""
        try:
            self.blocks.attach(stream, seq.key, hashes)
        except KeyError as e:
            raise SeqFailed(grpc.StatusCode.FAILED_PRECONDITION,
                            f"sequence {seq.seq_id!r}: {e.args[0]} on the worker") from None
        seq.kept_tokens = seq.next_pos = len(hashes) * self.stage.kv.block_size

    def _new_seq(self, stream: str, key: str, seq_step: pb.SeqStep) -> TailSeq:
        why = self.ended.get(stream, {}).get(seq_step.seq_id)
        if why is not None:
            raise SeqFailed(grpc.StatusCode.FAILED_PRECONDITION,
                            f"sequence {seq_step.seq_id!r} was {why}; ids cannot be reused")
        if not seq_step.HasField("params"):
            raise SeqFailed(grpc.StatusCode.NOT_FOUND,
                            f"unknown sequence {seq_step.seq_id!r}: its first step must carry "
                            "sampling params")
        try:
            params = params_from_proto(seq_step.params)
        except WireError as e:
            raise SeqFailed(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
        vocab = self.stage.config.vocab_size
        outside = [t for t in params.prompt_token_ids if not 0 <= t < vocab]
        if outside:
            raise SeqFailed(grpc.StatusCode.INVALID_ARGUMENT,
                            f"prompt_token_ids outside the vocabulary [0, {vocab}): {outside[:5]}")
        sampler = SamplerState.resume(params, list(seq_step.resume_output_ids),
                                      self._guide(params))
        return TailSeq(key=key, stream=stream, seq_id=seq_step.seq_id, sampler=sampler)

    def _guide(self, params) -> Guide | None:
        """The sequence's grammar matcher, compiled on its first step (None: no constraint)."""
        if params.constraint is None:
            return None
        if self.guides is None:
            raise SeqFailed(grpc.StatusCode.UNIMPLEMENTED,
                            "this worker has no tokenizer for structured outputs")
        try:
            return self.guides.create(params.constraint)
        except ConstraintError as e:
            raise SeqFailed(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None

    def release(self, stream: str, seq_id: str, why: str) -> None:
        """Free the sequence's KV and quota; its id is remembered as ended (`why`)."""
        seq = self.seqs.pop(f"{stream}/{seq_id}", None)
        if seq is not None:
            self.stage.release(seq.key)
            self.quota.release(stream, seq.key)
        ended = self.ended.setdefault(stream, OrderedDict())
        ended.setdefault(seq_id, why)
        while len(ended) > TOMBSTONES_PER_STREAM:
            ended.popitem(last=False)

    def drop_stream(self, stream: str) -> int:
        """Release every sequence the stream created (it ended or broke); returns how many."""
        keys = [key for key, seq in self.seqs.items() if seq.stream == stream]
        for key in keys:
            self.stage.release(self.seqs.pop(key).key)
        self.blocks.drop_stream(stream)
        self.ended.pop(stream, None)
        self.quota.drop_stream(stream)
        return len(keys)

    def expire_idle(self, cutoff_s: float, why: str) -> list[str]:
        """Release sequences last touched before cutoff_s; returns their keys."""
        idle = [seq for seq in self.seqs.values() if seq.touched_s < cutoff_s]
        for seq in idle:
            self.release(seq.stream, seq.seq_id, why)
        return [seq.key for seq in idle]
