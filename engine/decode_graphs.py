"""Steps of up to max_batch new tokens run from static buffers, as one CUDA graph per bucket.

A step of T new tokens is padded up to a bucket (1, 2, 4, 8, then multiples of 8, as serving
engines do); each token is a row: its input, the block-table row of its sequence and its
context length (its position + 1) are copied into static device buffers, and the captured
graph of that bucket is replayed: one launch instead of a few hundred. Attention reads each
row's context through the block table (engine/paged_decode.py), so a decode is one row and a
prefill chunk is one row per token, each seeing its sequence up to itself (causal: the step
writes all its keys and values before any row attends). A step mixing decodes with short
prefill chunks is therefore neither padded to its longest sequence nor run eagerly. Padding
rows read and write the KV cache's scratch block only. The host work of a step (choosing the
bucket, filling the buffers) never reads a device value.

On a device without CUDA graphs (and with capture off) the same step function runs eagerly
from the same buffers: the stand-in that CPU tests compare with the ordinary eager path.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch

from engine.batch import ForwardContext, StepBatch
from engine.kv_cache import KVCache
from engine.paged_decode import DecodeTables


log = logging.getLogger("duet.engine.graphs")


def batch_buckets(max_batch: int) -> list[int]:
    """1, 2, 4, 8, 16, 24, ... up to max_batch (which is always the last bucket)."""
    if max_batch < 1:
        raise ValueError(f"cuda_graph_max_batch must be >= 1, got {max_batch}")
    sizes = [b for b in (1, 2, 4) if b < max_batch] + list(range(8, max_batch, 8))
    return sizes + [max_batch]


def graph_batch_for(device: str, max_batch: int) -> int:
    """The cuda_graph_max_batch a stage on `device` gets: decode graphs on CUDA devices only
    (on a CPU the static buffers would only add copies)."""
    return max_batch if device.startswith("cuda") else 0


class DecodeGraphs:
    """Steps of up to max_batch new tokens of one stage, graphed per bucket of tokens."""

    def __init__(self, model, kv: KVCache, *, max_batch: int, hidden_size: int,
                 dtype: torch.dtype, capture: bool, max_tokens_per_seq: int):
        self.model, self.kv, self.capture = model, kv, capture
        self.buckets = batch_buckets(max_batch)
        # rows for sequences that hold cache but sit out a step (waiting, or past the bucket)
        self.tables = kv.enable_block_table(max(4 * max_batch, 256), max_tokens_per_seq)
        dev = kv.device
        if model.is_first:  # token ids [max]; padding rows keep whatever id was there (in range)
            self.inputs = torch.zeros(max_batch, dtype=torch.long, device=dev)
        else:  # hidden states [max, H]
            self.inputs = torch.zeros(max_batch, hidden_size, dtype=dtype, device=dev)
        self.meta = torch.ones(2, max_batch, dtype=torch.int32, device=dev)  # rows; lengths
        pin = dev.type == "cuda"
        self.staging = torch.ones(2, max_batch, dtype=torch.int32, pin_memory=pin)
        self.staging_np = self.staging.numpy()  # filled from lists without torch's per-call cost
        self.copied = torch.cuda.Event() if pin else None  # the staging buffer was read
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        self.capture_error: str | None = None  # why capture was turned off, if it was
        self.steps = 0  # steps run from the buffers

    def accepts(self, batch: StepBatch) -> bool:
        """A step of at most max_batch new tokens: decodes, short prefill chunks, or both."""
        return 0 < batch.num_tokens <= self.buckets[-1]

    def run(self, batch: StepBatch, inputs: torch.Tensor) -> torch.Tensor | None:
        """hidden [T, H] of a reserved step (a view, valid until the next step), or None when a
        sequence has no block-table row (the caller runs the step eagerly)."""
        rows = self.kv.table_rows(batch)
        if rows is None:
            return None
        n = batch.num_tokens
        bucket = next(b for b in self.buckets if b >= n)
        pad = bucket - n
        if self.copied is not None:
            self.copied.synchronize()  # the previous step's copy has left the pinned buffer
        if n == len(rows):  # one token a sequence: the decode step
            self.staging_np[0, :bucket] = rows + [self.tables.scratch_row] * pad
            self.staging_np[1, :bucket] = [c.end_pos for c in batch.chunks] + [1] * pad
        else:  # a row per token: its sequence's table row, and its position + 1
            self.staging_np[0, :n] = np.repeat(rows, [c.num_tokens for c in batch.chunks])
            self.staging_np[1, :n] = np.concatenate(
                [np.arange(c.start_pos + 1, c.end_pos + 1) for c in batch.chunks])
            self.staging_np[0, n:bucket] = self.tables.scratch_row
            self.staging_np[1, n:bucket] = 1
        self.meta[:, :bucket].copy_(self.staging[:, :bucket], non_blocking=True)
        if self.copied is not None:
            self.copied.record()
        self.inputs[:n].copy_(inputs, non_blocking=True)
        self.kv.mark_written(batch)
        self.steps += 1
        if not self.capture:
            return self._step(bucket)[:n]
        if bucket not in self.graphs and not self._capture(bucket):
            return self._step(bucket)[:n]
        graph, out = self.graphs[bucket]
        graph.replay()
        return out[:n]

    def _step(self, bucket: int) -> torch.Tensor:
        """The captured work: positions and slots from the tables, then the stage's layers.
        Every row is a query of its own (query_start), attending over its context length."""
        rows, lens = self.meta[0, :bucket], self.meta[1, :bucket]
        positions = (lens - 1).long()  # [b] the row's token's position
        bs = self.kv.block_size
        blocks = self.tables.table[rows.long(), positions // bs].long()  # [b]
        ctx = ForwardContext(
            positions=positions,
            slot_mapping=blocks * bs + positions % bs,
            query_start=list(range(bucket + 1)),
            context_lens=[0] * bucket,  # unknown to the host: attention reads decode_tables
            context_slots=None,
            context_mask=None,
            decode_tables=DecodeTables(self.tables.table, rows, lens, bs),
        )
        with torch.inference_mode():
            return self.model(self.inputs[:bucket], ctx, self.kv.layers)

    def capture_all(self) -> None:
        """Capture every bucket's graph now, at start, as serving engines do: a capture runs the
        stage once and records it (tens of ms for the 7B shape's 14 layers), which the first
        step of each new bucket paid in the middle of serving otherwise. The buffers hold only
        padding rows (the scratch block) while capturing; a replay reads them afresh."""
        if not self.capture:
            return
        started = time.perf_counter()
        self.staging_np[0], self.staging_np[1] = self.tables.scratch_row, 1
        self.meta.copy_(self.staging)
        for bucket in self.buckets:
            if bucket not in self.graphs and not self._capture(bucket):
                return  # capture is off now: steps run eagerly from the buffers
        log.info("captured %d graphs (steps of 1..%d new tokens) in %.2f s", len(self.buckets),
                 self.buckets[-1], time.perf_counter() - started)

    def _capture(self, bucket: int) -> bool:
        """Run the step once eagerly (compiles kernels, and computes this step), then capture it.
        Replaying the capture rewrites the same cache entries with the same values. A capture
        that fails (an op that syncs with the host) turns capture off: steps run eagerly."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._step(bucket)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                out = self._step(bucket)
        except RuntimeError as e:
            log.warning("decode graphs off: capturing a step of %d sequences failed: %s", bucket, e)
            self.capture, self.capture_error = False, f"{type(e).__name__}: {e}"
            return False
        self.graphs[bucket] = (graph, out)
        return True
