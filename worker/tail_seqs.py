"""The tail's sequence table: which sequences live on which API stream, their KV reservations
against the stream's quota, their kept prefix blocks, and why recently ended ids ended.

The step runner (worker/tail.py) asks it to admit a step's sequence and to release what ended;
every check that refuses one sequence (not the whole step) raises SeqFailed here."""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import grpc

from engine.constraint import ConstraintError
from engine.errors import KVCacheFull
from engine.guide import Guide, GuideFactory
from engine.sampler import SamplerState
from proto import pipeline_pb2 as pb
from proto.convert import WireError, params_from_proto
from worker.orphans import Orphanage, identity_of
from worker.prefix_blocks import StreamBlocks
from worker.stream_quota import StreamQuota, StreamQuotaExceeded

log = logging.getLogger(__name__)
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
    resume_key: str = ""  # kept under this when its stream breaks (worker/orphans.py)


class SeqFailed(Exception):
    """One sequence cannot run this step; it is released and its result carries the error."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


class SeqTable:
    """Live sequences per stream over the tail stage's KV cache."""

    def __init__(self, stage, *, stream_kv_share: float, stream_max_seqs: int,
                 guides: GuideFactory | None, orphan_grace_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic):
        self.stage = stage
        self.guides = guides  # compiles structured-output constraints; None: refused
        self.seqs: dict[str, TailSeq] = {}
        self.ended: dict[str, OrderedDict[str, str]] = {}  # stream -> seq_id -> why it ended
        self.quota = StreamQuota(stage.kv.capacity_tokens, stage.kv.block_size,
                                 stream_kv_share, stream_max_seqs)
        self.blocks = StreamBlocks(stage.kv)
        self.clock = clock
        self.orphans: Orphanage[TailSeq] = Orphanage(orphan_grace_s, self.quota.kv_tokens, clock)

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
            self.quota.check(stream, seq.key, end_pos - seq.kept_tokens)
            self.stage.kv.reserve(seq.key, end_pos)  # an adopted one keeps its first key
        except (KVCacheFull, StreamQuotaExceeded) as e:
            self.stage.release(seq.key)  # the blocks it attached
            raise SeqFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e)) from None
        self.quota.record(stream, seq.key, end_pos - seq.kept_tokens)
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
        return TailSeq(key=key, stream=stream, seq_id=seq_step.seq_id, sampler=sampler,
                       resume_key=seq_step.resume_key)

    def adopt(self, stream: str, seq_step: pb.SeqStep, result: pb.SeqResult) -> None:
        """Take over a kept sequence of a broken stream (worker/orphans.py); a refusal leaves
        no tombstone, so the API can start the sequence afresh under the same id."""
        key = f"{stream}/{seq_step.seq_id}"
        seq = None if key in self.seqs else self._take(seq_step.resume_key, stream)
        code, why = grpc.StatusCode.NOT_FOUND, (
            f"no kept sequence to adopt for {seq_step.seq_id!r} (its grace period passed, it "
            "finished, or another client owns it)")
        if seq is not None:
            try:
                self.quota.check(stream, seq.key, seq.next_pos)
            except StreamQuotaExceeded as e:
                self.stage.release(seq.key)
                code, why, seq = grpc.StatusCode.RESOURCE_EXHAUSTED, str(e), None
        if seq is None:
            result.error.code, result.error.message = code.value[0], why
            return
        self.quota.record(stream, seq.key, seq.next_pos)
        seq.stream, seq.seq_id, seq.kept_tokens = stream, seq_step.seq_id, 0
        seq.touched_s = self.clock()
        self.seqs[key] = seq
        result.adopted.output_ids.extend(seq.sampler.output_token_ids)
        result.adopted.next_pos = seq.next_pos
        log.info("stream %s adopted %s at position %d", stream, seq.seq_id, seq.next_pos)

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

    def _take(self, resume_key: str, stream: str) -> TailSeq | None:
        """The kept sequence of this key; or a live one of another stream of the same client
        identity: a crashed host sends no FIN, so its stream may still look open here, but
        the client resuming through `stream` says the request is not the old API's any more
        (a step of the old stream for it then fails NOT_FOUND)."""
        seq = self.orphans.take(resume_key, stream)
        if seq is not None or not resume_key:
            return seq
        me = identity_of(stream)
        seq = next((s for s in self.seqs.values() if s.resume_key == resume_key
                    and s.stream != stream and identity_of(s.stream) == me), None)
        if seq is not None:
            del self.seqs[f"{seq.stream}/{seq.seq_id}"]
            self.quota.release(seq.stream, seq.key)
        return seq

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
        """The stream ended or broke: keep its sequences that have a resume key for adoption
        (worker/orphans.py), release the rest; returns how many it held."""
        keys = [key for key, seq in self.seqs.items() if seq.stream == stream]
        kept = len(self.orphans)
        for key in keys:
            for seq in self.orphans.keep(self.seqs.pop(key), stream):
                self.stage.release(seq.key)
        if len(self.orphans) > kept:
            log.info("stream %s ended: %d sequences kept %g s for adoption (orphan_grace_s)",
                     stream, len(self.orphans) - kept, self.orphans.grace_s)
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

    def expire_orphans(self) -> list[str]:
        """Release the kept sequences nobody adopted within orphan_grace_s; their keys."""
        orphans = self.orphans.expired()
        for seq in orphans:
            self.stage.release(seq.key)
        if orphans:
            log.info("released %d kept sequences nobody adopted within %g s (orphan_grace_s)",
                     len(orphans), self.orphans.grace_s)
        return [seq.key for seq in orphans]
