"""Run one pipeline step on the tail stage: check it against the sequence table, reserve KV,
forward, sample, release. Both executors (local and inside Triton) run exactly this class."""
from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from engine.batch import SeqChunk, StepBatch
from engine.config import ModelConfig
from engine.errors import KVCacheFull
from engine.constraint import ConstraintError
from engine.dtypes import DTYPES
from engine.fingerprint import checkpoint_fingerprint
from engine.guide import Guide, GuideFactory
from engine.host_staging import HostToDevice
from engine.sampler import SamplerState, sample
from engine.stage import Stage
from proto import pipeline_pb2 as pb
from proto.convert import WireError, params_from_proto
from worker.prefix_blocks import StreamBlocks
from worker.stream_quota import StreamQuota, StreamQuotaExceeded
from worker.wire import check_hidden, sampled_to_proto

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


@dataclass(frozen=True)
class PlannedSeq:
    """A sequence of this step that passed its checks: where its rows and result are."""

    index: int  # in request.seqs and in the reply's results
    seq: TailSeq
    step: pb.SeqStep
    row: int  # first row of its tokens in the step's hidden [T, H]

    @property
    def rows(self) -> range:
        return range(self.row, self.row + self.step.num_tokens)


class SeqFailed(Exception):
    """One sequence cannot run this step; it is released and its result carries the error."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


class TailRunner:
    """The worker's sequence table around a tail Stage (layers [k, L), norm, LM head)."""

    def __init__(self, stage, *, fingerprint: str, model_name: str, idle_timeout_s: float,
                 clock=time.monotonic, stream_kv_share: float = 1.0,
                 stream_max_seqs: int = 1 << 30, guides: GuideFactory | None = None):
        self.stage = stage
        self.guides = guides  # compiles structured-output constraints; None: refused
        cfg = stage.config
        self.hidden_size, self.num_layers = cfg.hidden_size, cfg.num_hidden_layers
        self.dtype = stage.dtype  # "bfloat16", "float16" or "float32"
        self.fingerprint, self.model_name = fingerprint, model_name
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self.seqs: dict[str, TailSeq] = {}
        self.ended: dict[str, OrderedDict[str, str]] = {}  # stream -> seq_id -> why it ended
        self.quota = StreamQuota(stage.kv.capacity_tokens, stage.kv.block_size,
                                 stream_kv_share, stream_max_seqs)
        self.blocks = StreamBlocks(stage.kv)
        self.to_device = HostToDevice(stage.device)  # the wire's hidden states, via pinned memory

    @classmethod
    def load(cls, model_dir: str, layer_start: int, *, dtype: str, device: str,
             kv_cache_bytes: int, block_size: int, idle_timeout_s: float,
             fp8: str = "native", cuda_graph_max_batch: int = 0, **limits) -> "TailRunner":
        num_layers = ModelConfig.from_dir(model_dir).num_hidden_layers
        stage = Stage.load(model_dir, layer_start, num_layers, dtype=dtype, device=device,
                           kv_cache_bytes=kv_cache_bytes, block_size=block_size, fp8=fp8,
                           cuda_graph_max_batch=cuda_graph_max_batch)
        return cls(stage, fingerprint=checkpoint_fingerprint(model_dir),
                   model_name=Path(model_dir).name, idle_timeout_s=idle_timeout_s,
                   guides=GuideFactory(model_dir, stage.config.vocab_size), **limits)

    def info(self) -> pb.HandshakeReply:
        """What the worker tells an API at handshake (executor and limits are the server's)."""
        return pb.HandshakeReply(
            fingerprint=self.fingerprint, layer_start=self.stage.layer_start,
            layer_end=self.num_layers, num_layers=self.num_layers, dtype=self.dtype,
            hidden_size=self.hidden_size, kv_capacity_tokens=self.stage.kv.capacity_tokens,
            model_name=self.model_name, stream_kv_tokens=self.quota.kv_tokens,
            stream_max_seqs=self.quota.max_seqs, kv_block_size=self.stage.kv.block_size,
        )

    # --- one step ------------------------------------------------------------------------
    def step(self, stream: str, request: pb.StepRequest, hidden_data=None) -> pb.StepReply:
        """hidden_data: the hidden states' bytes when they came beside the message (a uint8
        buffer from Triton), else they are request.hidden.data."""
        start_s = time.perf_counter()
        data = request.hidden.data if hidden_data is None else hidden_data
        results = [pb.SeqResult(seq_id=s.seq_id) for s in request.seqs]
        in_step = {s.seq_id for s in request.seqs}
        self._apply_cache_ops(stream, request, [i for i in request.release if i not in in_step])
        try:
            self._check_layout(request, len(data))
        except WireError as e:
            for index, seq_step in enumerate(request.seqs):
                self._fail(stream, seq_step.seq_id, results[index],
                           SeqFailed(grpc.StatusCode.INVALID_ARGUMENT, str(e)))
        else:
            if request.seqs:
                msg = request.hidden
                hidden = self.to_device.put(data, DTYPES[msg.dtype], list(msg.shape))  # [T, H]
                self._run(stream, request, hidden, results)
        for seq_id in in_step.intersection(request.release):
            self._release(stream, seq_id, "released")
        return self._reply(request.step_id, results, time.perf_counter() - start_s)

    def _apply_cache_ops(self, stream: str, request: pb.StepRequest, release: list[str]) -> None:
        """Keep, release (what the step does not run), evict: the API applied the same to
        its head, in this order, before this step."""
        for c in request.cache_blocks:
            seq = self.seqs.get(f"{stream}/{c.seq_id}")
            if seq is not None and self.blocks.keep(stream, seq.key, c.block_index, c.hash):
                seq.kept_tokens += self.stage.kv.block_size
                self.quota.record(stream, seq.key, seq.next_pos - seq.kept_tokens)
        for seq_id in release:
            self._release(stream, seq_id, "released")
        for h in request.evict:
            self.blocks.evict(stream, h)
        self.quota.set_kept(stream, self.blocks.kept_tokens(stream))

    def _check_layout(self, request: pb.StepRequest, nbytes: int) -> None:
        """Message-level checks: without them no row of `hidden` can be attributed."""
        for s in request.seqs:
            if s.num_tokens < 1:
                raise WireError(f"sequence {s.seq_id!r} has num_tokens {s.num_tokens}, "
                                     "so the rows of hidden cannot be attributed")
        rows = sum(s.num_tokens for s in request.seqs)
        if rows or request.HasField("hidden"):
            check_hidden(request.hidden, self.dtype, rows, self.hidden_size, nbytes)

    def _run(self, stream: str, request: pb.StepRequest, hidden: torch.Tensor,
             results: list[pb.SeqResult]) -> None:
        planned: list[PlannedSeq] = []
        row, counts = 0, Counter(s.seq_id for s in request.seqs)
        finite = torch.isfinite(hidden).all(dim=1).tolist() if hidden.numel() else []  # [T]
        for index, seq_step in enumerate(request.seqs):
            try:
                if counts[seq_step.seq_id] > 1:
                    raise SeqFailed(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"sequence {seq_step.seq_id!r} appears twice in one step")
                if not all(finite[row:row + seq_step.num_tokens]):
                    raise SeqFailed(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"hidden states of sequence {seq_step.seq_id!r} contain "
                                    "NaN or infinity")
                seq = self._admit(stream, seq_step)
                planned.append(PlannedSeq(index, seq, seq_step, row))
            except SeqFailed as e:
                self._fail(stream, seq_step.seq_id, results[index], e)
            row += seq_step.num_tokens
        if not planned:
            return
        try:
            self._forward(hidden, planned, results)
        except Exception as e:  # a bug or a device error: fail this batch, keep serving
            log.exception("tail forward failed on step %d", request.step_id)
            failure = SeqFailed(grpc.StatusCode.INTERNAL, f"tail forward failed: {e}")
            for p in planned:
                self._fail(stream, p.step.seq_id, results[p.index], failure)

    def _admit(self, stream: str, seq_step: pb.SeqStep) -> TailSeq:
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

    def _forward(self, hidden: torch.Tensor, planned: list[PlannedSeq],
                 results: list[pb.SeqResult]) -> None:
        rows = [r for p in planned for r in p.rows]
        if len(rows) != hidden.shape[0]:  # some sequences failed: drop their rows
            hidden = hidden[torch.tensor(rows, device=hidden.device)]
        batch = StepBatch(tuple(SeqChunk(p.seq.key, p.step.start_pos, p.step.num_tokens)
                                for p in planned))
        out = self.stage.forward(batch, hidden)  # [T', H]
        last_rows = batch.last_token_rows()
        sampling = [(p, last) for p, last in zip(planned, last_rows) if p.step.sample]
        if sampling:
            logits = self.stage.compute_logits(out[[last for _, last in sampling]])  # [N, V]
            picks = sample(logits, [p.seq.sampler for p, _ in sampling])
            for (p, _), pick in zip(sampling, picks):
                results[p.index].sampled.CopyFrom(sampled_to_proto(pick))
        now = self.clock()
        for p in planned:
            p.seq.next_pos, p.seq.touched_s = p.step.start_pos + p.step.num_tokens, now

    # --- lifecycle -----------------------------------------------------------------------
    def _fail(self, stream: str, seq_id: str, result: pb.SeqResult, error: SeqFailed) -> None:
        result.error.code, result.error.message = error.code.value[0], str(error)
        self._release(stream, seq_id, f"failed ({error.code.name})")

    def _release(self, stream: str, seq_id: str, why: str) -> None:
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

    def expire_idle(self) -> list[str]:
        """Release sequences untouched for idle_timeout_s; returns their keys."""
        cutoff = self.clock() - self.idle_timeout_s
        idle = [seq for seq in self.seqs.values() if seq.touched_s < cutoff]
        for seq in idle:
            self._release(seq.stream, seq.seq_id, f"released after {self.idle_timeout_s:g} s idle")
        return [seq.key for seq in idle]

    def _reply(self, step_id: int, results, compute_s: float) -> pb.StepReply:
        kv = self.stage.kv
        return pb.StepReply(step_id=step_id, results=results, kv_used_tokens=kv.used_tokens,
                            kv_capacity_tokens=kv.capacity_tokens, worker_compute_s=compute_s)

    def status(self) -> pb.StepReply:
        """A reply with no results: the KV counters, for lifecycle calls."""
        return self._reply(0, [], 0.0)

