"""The master's stage [0, k): embedding and the first layers, and the wire form of its output."""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from engine.batch import SeqChunk, StepBatch
from engine.dtypes import DTYPE_NAMES
from engine.host_staging import DeviceToHost, HostCopy
from engine.stage import Stage
from master.wire import empty_hidden
from proto import pipeline_pb2 as pb


class PendingHidden:
    """A head output whose device -> host copy is under way; `message()` waits for it."""

    def __init__(self, copy: HostCopy | None, ready: pb.Tensor | None = None):
        self._copy, self._ready = copy, ready

    def done(self) -> bool:
        """Whether message() would return without waiting for the device."""
        return self._ready is not None or self._copy.done()

    def message(self) -> pb.Tensor:
        if self._ready is None:
            host = self._copy.host  # [T, H]
            self._ready = pb.Tensor(data=self._copy.to_bytes(), dtype=DTYPE_NAMES[host.dtype],
                                    shape=list(host.shape))
        return self._ready


class Head:
    """Runs embedding + layers [0, k) for a micro-batch; owns the head's KV cache."""

    def __init__(self, stage: Stage):
        assert stage.is_first, "the head stage starts at layer 0"
        self.stage = stage
        self.to_host = DeviceToHost(stage.devices[stage.layer_end - 1])

    @classmethod
    def load(
        cls,
        model_dir: str,
        layer_end: int,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        kv_cache_bytes: int,
        block_size: int = 16,
        load_format: str = "safetensors",
        fp8: str = "native",
        cuda_graph_max_batch: int = 0,
        tensor_parallel_size: int = 1,
        tp_timeout_s: float = 60.0,
    ) -> Head:
        """tensor_parallel_size > 1: this process is rank 0 and starts the others, which
        exit with it (engine/rank_launcher.py)."""
        load = Stage.load
        if tensor_parallel_size > 1:
            from engine.rank_launcher import RankLauncher

            load = RankLauncher(tensor_parallel_size, device, timeout_s=tp_timeout_s).load
        stage = load(
            model_dir, 0, layer_end, dtype=dtype, device=device,
            kv_cache_bytes=kv_cache_bytes, block_size=block_size, load_format=load_format,
            fp8=fp8, cuda_graph_max_batch=cuda_graph_max_batch,
        )
        return cls(stage)

    @property
    def layer_end(self) -> int:
        return self.stage.layer_end

    @property
    def vocab_size(self) -> int:
        return self.stage.config.vocab_size

    @property
    def hidden_size(self) -> int:
        return self.stage.config.hidden_size

    @property
    def dtype(self) -> str:
        return self.stage.dtype  # "bfloat16", "float16" or "float32", as on the wire

    @property
    def kv_capacity_tokens(self) -> int:
        return self.stage.kv.capacity_tokens

    @property
    def kv_used_tokens(self) -> int:
        return self.stage.kv.used_tokens

    @property
    def kv_usage(self) -> float:
        return self.stage.kv.usage

    def launch(self, chunks: Sequence[SeqChunk], token_ids: list[int]) -> PendingHidden:
        """token ids [T] of the chunks, in row order -> hidden states [T, H] for the wire,
        returned as soon as the device has the work queued (the copy to the host included)."""
        if not chunks:
            return PendingHidden(None, empty_hidden(self.hidden_size, self.dtype))
        # [T] on the host: the stage checks the id range there, without waiting for the device
        inputs = torch.tensor(token_ids, dtype=torch.long)
        hidden = self.stage.forward(StepBatch(tuple(chunks)), inputs)  # [T, H]
        pending = PendingHidden(self.to_host.start(hidden))
        if hidden.device.type != "cuda":  # nothing to overlap; a static CPU buffer is reused
            pending.message()
        return pending

    def forward(self, chunks: Sequence[SeqChunk], token_ids: list[int]) -> pb.Tensor:
        """`launch`, waited for."""
        return self.launch(chunks, token_ids).message()

    def release(self, seq_ids: Iterable[str]) -> None:
        for seq_id in seq_ids:
            self.stage.release(seq_id)

    # --- prefix caching: the master's instructions, applied here as on the worker ----------
    def keep_blocks(self, blocks: Iterable[tuple[str, int, int]]) -> None:
        """(seq_id, block index, hash): keep the sequence's written block under the hash."""
        for seq_id, index, h in blocks:
            self.stage.kv.cache_block(seq_id, index, f"{h:016x}")

    def evict(self, hashes: Iterable[int]) -> None:
        for h in hashes:
            self.stage.kv.evict(f"{h:016x}")

    def attach_prefixes(self, seqs: Iterable[tuple[str, list[int]]]) -> None:
        """New sequences start on kept blocks: (seq_id, hashes of its first blocks)."""
        for seq_id, hashes in seqs:
            self.stage.kv.attach(seq_id, [f"{h:016x}" for h in hashes])

    def drop_cached(self) -> None:
        """Forget every kept block (the worker's stream, and its copy, is gone)."""
        self.stage.kv.evict_all()

    @property
    def kv_cached_tokens(self) -> int:
        return self.stage.kv.cached_tokens
