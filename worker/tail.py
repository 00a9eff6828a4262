"""Run one pipeline step on the tail stage: check its layout, admit its sequences through the
sequence table (worker/tail_seqs.py), forward, sample, release. Both executors (local and
inside Triton) run exactly this class."""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from engine.batch import SeqChunk, StepBatch
from engine.config import ModelConfig
from engine.dtypes import DTYPES
from engine.fingerprint import checkpoint_fingerprint
from engine.guide import GuideFactory
from engine.host_staging import HostToDevice
from engine.parallel import RankFailure
from engine.sampler import sample
from engine.stage import Stage
from proto import pipeline_pb2 as pb
from proto.convert import WireError
from worker.tail_seqs import SeqFailed, SeqTable, TailSeq
from worker.wire import check_hidden, write_sampled

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PlannedSeq:
    """A sequence of this step that passed its checks: where its rows and result are."""

    index: int  # in request.seqs and in the reply's results
    seq: TailSeq
    step: pb.SeqStep
    row: int  # first row of its tokens in the step's hidden [T, H]

    @property
    def rows(self) -> range:
        return range(self.row, self.row + self.step.num_tokens)


class TailRunner:
    """Steps through a tail Stage (layers [k, L), norm, LM head) over the sequence table."""

    def __init__(self, stage, *, fingerprint: str, model_name: str, idle_timeout_s: float,
                 clock=time.monotonic, stream_kv_share: float = 1.0,
                 stream_max_seqs: int = 1 << 30, guides: GuideFactory | None = None,
                 orphan_grace_s: float = 0.0):
        self.stage = stage
        cfg = stage.config
        self.hidden_size, self.num_layers = cfg.hidden_size, cfg.num_hidden_layers
        self.dtype = stage.dtype  # "bfloat16", "float16" or "float32"
        self.fingerprint, self.model_name = fingerprint, model_name
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self.table = SeqTable(stage, stream_kv_share=stream_kv_share,
                              stream_max_seqs=stream_max_seqs, guides=guides,
                              orphan_grace_s=orphan_grace_s, clock=clock)
        self.to_device = HostToDevice(stage.device)  # the wire's hidden states, via pinned memory

    @classmethod
    def load(cls, model_dir: str, layer_start: int, *, dtype: str, device: str,
             kv_cache_bytes: int, block_size: int, idle_timeout_s: float,
             fp8: str = "native", cuda_graph_max_batch: int = 0, launcher=None,
             **limits) -> "TailRunner":
        """launcher: an engine.rank_launcher.RankLauncher for a tensor-parallel tail."""
        num_layers = ModelConfig.from_dir(model_dir).num_hidden_layers
        load = launcher.load if launcher is not None else Stage.load
        stage = load(model_dir, layer_start, num_layers, dtype=dtype, device=device,
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
            model_name=self.model_name, stream_kv_tokens=self.table.quota.kv_tokens,
            stream_max_seqs=self.table.quota.max_seqs, kv_block_size=self.stage.kv.block_size,
        )

    # --- one step ------------------------------------------------------------------------
    def step(self, stream: str, request: pb.StepRequest, hidden_data=None) -> pb.StepReply:
        """hidden_data: the hidden states' bytes when they came beside the message (a uint8
        buffer from Triton), else they are request.hidden.data."""
        start_s = time.perf_counter()
        data = request.hidden.data if hidden_data is None else hidden_data
        reply = pb.StepReply(step_id=request.step_id)
        add = reply.results.add  # filled in place: a list passed in would be copied
        results = [add(seq_id=s.seq_id) for s in request.seqs]
        in_step = {s.seq_id for s in request.seqs}
        released_now = [i for i in request.release if i not in in_step]
        self.table.apply_cache_ops(stream, request, released_now)
        try:
            self._check_layout(request, len(data))
        except WireError as e:
            for index, seq_step in enumerate(request.seqs):
                self._fail(stream, seq_step.seq_id, results[index],
                           SeqFailed(grpc.StatusCode.INVALID_ARGUMENT, str(e)))
        else:
            if request.seqs:
                msg = request.hidden
                hidden = (self.to_device.put(data, DTYPES[msg.dtype], list(msg.shape))  # [T, H]
                          if request.HasField("hidden")  # else only adoptions: no rows
                          else torch.empty(0, self.hidden_size, device=self.stage.device))
                self._run(stream, request, hidden, results)
        for seq_id in in_step.intersection(request.release):
            self.table.release(stream, seq_id, "released")
        return self._counters(reply, time.perf_counter() - start_s)

    def _check_layout(self, request: pb.StepRequest, nbytes: int) -> None:
        """Message-level checks: without them no row of `hidden` can be attributed."""
        for s in request.seqs:
            if s.adopt and s.num_tokens:
                raise WireError(f"sequence {s.seq_id!r} adopts with num_tokens {s.num_tokens}; "
                                "an adoption carries no rows")
            if s.num_tokens < 1 and not s.adopt:
                raise WireError(f"sequence {s.seq_id!r} has num_tokens {s.num_tokens}, "
                                     "so the rows of hidden cannot be attributed")
        rows = sum(s.num_tokens for s in request.seqs)
        if rows or request.HasField("hidden"):
            check_hidden(request.hidden, self.dtype, rows, self.hidden_size, nbytes)

    def _run(self, stream: str, request: pb.StepRequest, hidden: torch.Tensor,
             results: list[pb.SeqResult]) -> None:
        planned: list[PlannedSeq] = []
        ids = [s.seq_id for s in request.seqs]
        counts = Counter(ids) if len(set(ids)) < len(ids) else None  # None: no repeats
        row = 0
        for index, seq_step in enumerate(request.seqs):
            twice = counts is not None and counts[seq_step.seq_id] > 1
            if seq_step.adopt and not twice:  # no rows (worker/orphans.py)
                self.table.adopt(stream, seq_step, results[index])
                continue
            num = seq_step.num_tokens
            try:
                if twice:
                    raise SeqFailed(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"sequence {seq_step.seq_id!r} appears twice in one step")
                seq = self.table.admit(stream, seq_step)  # its rows' values: after the forward
                planned.append(PlannedSeq(index, seq, seq_step, row))
            except SeqFailed as e:
                self._fail(stream, seq_step.seq_id, results[index], e)
            row += num
        if not planned:
            return
        try:
            self._forward(stream, hidden, planned, results)
        except RankFailure:  # the whole stage is down: the executor restarts its ranks
            raise
        except Exception as e:  # a bug or a device error: fail this batch, keep serving
            log.exception("tail forward failed on step %d", request.step_id)
            failure = SeqFailed(grpc.StatusCode.INTERNAL, f"tail forward failed: {e}")
            for p in planned:
                self._fail(stream, p.step.seq_id, results[p.index], failure)

    def _forward(self, stream: str, hidden: torch.Tensor, planned: list[PlannedSeq],
                 results: list[pb.SeqResult]) -> None:
        if sum(p.step.num_tokens for p in planned) != hidden.shape[0]:  # some failed: drop
            rows = [r for p in planned for r in p.rows]  # their rows
            hidden = hidden[torch.tensor(rows, device=hidden.device)]
        # Rows with NaN or infinity are found on the device beside the forward, not by a read
        # before it (a host wait in every step), and zeroed so that nothing non-finite reaches
        # another row; their sequences fail once the step's one read has waited for the device.
        finite = torch.isfinite(hidden).all(dim=1)  # [T']
        hidden.nan_to_num_(0.0, 0.0, 0.0)  # a tensor of this step alone (HostToDevice.put)
        finite_host = finite.to("cpu", non_blocking=True)  # pinned: valid after that read
        batch = StepBatch(tuple(SeqChunk(p.seq.key, p.step.start_pos, p.step.num_tokens)
                                for p in planned))
        out = self.stage.forward(batch, hidden)  # [T', H]
        last_rows = batch.last_token_rows()
        sampling = [(p, last) for p, last in zip(planned, last_rows) if p.step.sample]
        if sampling:
            picked = [last for _, last in sampling]
            if len(picked) != out.shape[0]:  # else a decode step: every row samples, in order
                out = out[torch.tensor(picked, device=out.device)]
            picks = sample(self.stage.compute_logits(out), [p.seq.sampler for p, _ in sampling])
            for (p, _), pick in zip(sampling, picks):
                write_sampled(results[p.index].sampled, pick)
        else:  # no read waited for the device
            finite_host = finite.cpu()
        now = self.clock()
        for p, ok in zip(planned, self._rows_finite(planned, finite_host)):
            if ok:
                p.seq.next_pos, p.seq.touched_s = p.step.start_pos + p.step.num_tokens, now
            else:  # its sampled token, if any, came from zeros: replaced by the error
                self._fail(stream, p.step.seq_id, results[p.index], SeqFailed(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"hidden states of sequence {p.step.seq_id!r} contain NaN or infinity"))

    @staticmethod
    def _rows_finite(planned: list[PlannedSeq], finite: torch.Tensor) -> list[bool]:
        """finite: [T'] bool on the host, the planned sequences' rows in order -> one flag each."""
        if bool(finite.all()):
            return [True] * len(planned)
        flags, row = [], 0
        for p in planned:
            flags.append(bool(finite[row:row + p.step.num_tokens].all()))
            row += p.step.num_tokens
        return flags

    # --- lifecycle -----------------------------------------------------------------------
    def _fail(self, stream: str, seq_id: str, result: pb.SeqResult, error: SeqFailed) -> None:
        result.error.code, result.error.message = error.code.value[0], str(error)
        self.table.release(stream, seq_id, f"failed ({error.code.name})")

    def drop_stream(self, stream: str) -> int:
        """The stream ended or broke: its sequences are kept for adoption or released."""
        return self.table.drop_stream(stream)

    def expire_idle(self) -> list[str]:
        """Release sequences untouched for idle_timeout_s, and kept ones nobody adopted within
        orphan_grace_s; returns their keys."""
        return self.table.expire_idle(self.clock() - self.idle_timeout_s,
                                      f"released after {self.idle_timeout_s:g} s idle"
                                      ) + self.table.expire_orphans()

    def _counters(self, reply: pb.StepReply, compute_s: float) -> pb.StepReply:
        kv = self.stage.kv
        reply.kv_used_tokens, reply.kv_capacity_tokens = kv.used_tokens, kv.capacity_tokens
        reply.worker_compute_s = compute_s
        return reply

    def status(self) -> pb.StepReply:
        """A reply with no results: the KV counters, for lifecycle calls."""
        return self._counters(pb.StepReply(), 0.0)
