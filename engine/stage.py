"""A loaded layer range of a checkpoint with its KV cache: what the master and the worker run."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from engine.batch import StepBatch
from engine.config import ModelConfig
from engine.checkpoint import CheckpointFiles
from engine.decode_graphs import DecodeGraphs
from engine.dtypes import DTYPES
from engine.eager_warmup import warm_eager_steps
from engine.errors import CheckpointError
from engine.fp8_native import FP8_MODES, SCALE_SUFFIX, convert_to_native, fp8_mode
from engine.kv_cache import KVCache
from engine.models import model_class
from engine.models.base import StageModel
from engine.packed_linear import pack_linears
from engine.parallel import TPGroup
from engine.placement import forward_spread, layer_devices, place, planned_ranges
from engine.weights import fp8_block, load_weights

log = logging.getLogger("duet.engine.load")

LOAD_FORMATS = ("safetensors", "dummy")


class Stage:
    """Layers [layer_start, layer_end) of one checkpoint, loaded on a device, with a KV cache."""

    def __init__(
        self,
        config: ModelConfig,
        model: StageModel,
        kv: KVCache,
        devices: dict[int, torch.device],
        dtype: str,
        load_seconds: float,
        tp: TPGroup | None = None,
    ):
        self.config, self.model, self.kv = config, model, kv
        self.layer_start, self.layer_end = model.layer_start, model.layer_end
        self.is_first, self.is_last = model.is_first, model.is_last
        self.dtype, self.load_seconds = dtype, load_seconds
        self.devices = devices
        self.device = devices[self.layer_start]  # where inputs go (and the forward context)
        self._spread = len(set(devices.values())) > 1
        self.decode_graphs: DecodeGraphs | None = None  # made by enable_decode_graphs
        self.tp = tp or TPGroup.single()  # this rank's place in the stage's tensor-parallel group
        # Rank 0 of a tensor-parallel stage: tells the other ranks each step before running it
        # (an engine.rank_launcher.Leader, set by the launcher); None everywhere else.
        self.leader = None

    def enable_decode_graphs(self, max_batch: int, capture: bool | None = None) -> None:
        """Run steps of up to max_batch new tokens from static buffers, captured as CUDA graphs
        per bucket of tokens, all of them now (capture None: on CUDA devices). A stage spread
        over several GPUs keeps running every step eagerly."""
        if self._spread or not self.tp.is_single:
            log.info("decode graphs off: the stage is spread over several GPUs (%s)",
                     "by layer" if self._spread else "tensor parallel")
            return
        self.decode_graphs = DecodeGraphs(
            self.model, self.kv, max_batch=max_batch, hidden_size=self.config.hidden_size,
            dtype=DTYPES[self.dtype], capture=self.device.type == "cuda" if capture is None else capture,
            max_tokens_per_seq=self.config.max_position_embeddings,
        )
        self.decode_graphs.capture_all()

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        layer_start: int,
        layer_end: int,
        *,
        dtype: str = "float32",
        device: str = "cpu",
        kv_cache_bytes: int = 256 * 2**20,
        block_size: int = 16,
        load_format: str = "safetensors",
        seed: int = 0,
        fp8: str = "native",
        cuda_graph_max_batch: int = 0,
        tp: TPGroup | None = None,
    ) -> "Stage":
        """Build the stage's layers on `device` and fill them (load_format "dummy": seeded random).
        device "cuda" on a host of several GPUs spreads the layers over all of them.
        cuda_graph_max_batch > 0: steps of up to that many new tokens (decodes, short prefill
        chunks, or both) run as CUDA graphs.
        An FP8 checkpoint stays FP8 with fp8 "native" where the GPU can multiply in FP8 (else it
        is dequantized to `dtype`, and the log line says why).
        tp: this process's rank of a tensor-parallel stage (engine/rank_launcher.py starts them):
        it builds and reads only its share of each tensor, on tp.device."""
        _check_choices(dtype=(dtype, DTYPES), fp8=(fp8, FP8_MODES),
                       load_format=(load_format, LOAD_FORMATS))
        started = time.perf_counter()
        config = ModelConfig.from_dir(model_dir)
        _check_range(config, model_dir, layer_start, layer_end)
        tp = tp or TPGroup.single()
        devices = _stage_devices(layer_start, layer_end, device, tp,
                                 lambda: planned_ranges(model_dir, layer_start, layer_end, device, dtype, fp8))
        with torch.device("meta"):  # no memory and no random init for weights about to be loaded
            model = _shard(model_class(config.architecture)(config, layer_start, layer_end), tp)
            fp8_note = _fp8_setup(model, model_dir, fp8, devices[layer_start], load_format)
        place(model, devices, DTYPES[dtype]).eval()
        if devices[layer_start].type == "cuda":  # sibling projections as one product each
            pack_linears(model)
        load_weights(model, model_dir, load_format=load_format, seed=seed)
        kv = KVCache(_kv_token_shapes(model, tp), devices, kv_cache_bytes,
                     block_size=block_size, dtype=DTYPES[dtype])
        seconds = time.perf_counter() - started
        log.info(
            "stage [%d, %d) of %s ready in %.1f s on %s, %s%s: KV cache for %d tokens (%.2f GiB)",
            layer_start, layer_end, Path(model_dir).name, seconds,
            ", ".join(sorted({str(d) for d in devices.values()})), dtype, fp8_note,
            kv.capacity_tokens, kv.capacity_tokens * kv.bytes_per_token / 2**30,
        )
        stage = cls(config, model, kv, devices, dtype, seconds, tp)
        if cuda_graph_max_batch:
            stage.enable_decode_graphs(cuda_graph_max_batch)
        if stage.device.type == "cuda" and tp.is_single:  # other ranks join steps only later
            warm_eager_steps(stage)
        return stage

    def weight_bytes(self) -> int:
        """Bytes of the stage's parameters and buffers (FP8 weights count one byte each)."""
        tensors = {id(t): t for t in [*self.model.parameters(), *self.model.buffers()]}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def forward(self, batch: StepBatch, inputs: torch.Tensor) -> torch.Tensor:
        """inputs: token ids [T] (first stage) or hidden [T, H] -> hidden [T, H] after its layers.

        Reserves KV for every chunk first: KVCacheFull names the first sequence that does not
        fit and leaves the cache as it was.
        """
        self._check_inputs(batch, inputs)
        self.kv.check_batch(batch)
        self.kv.reserve_all((c.seq_id, c.end_pos) for c in batch.chunks)
        graphs = self.decode_graphs
        if graphs is not None and graphs.accepts(batch):
            with torch.inference_mode():
                out = graphs.run(batch, inputs if self.is_first else inputs.to(DTYPES[self.dtype]))
            if out is not None:
                return out
        ctx = self.kv.build_context(batch)
        if self.leader is not None:  # the other ranks run the same step on their shares
            self.leader.forward(ctx, inputs)
        return self.run_context(ctx, inputs)

    def run_context(self, ctx, inputs: torch.Tensor) -> torch.Tensor:
        """The layers over a built step context (what every rank of a tensor-parallel stage
        runs; rank 0 built the context from its KV block tables)."""
        with torch.inference_mode():
            inputs = inputs.to(self.device)
            if not self.is_first:
                inputs = inputs.to(DTYPES[self.dtype])
            if self._spread:
                return forward_spread(self.model, inputs, ctx, self.kv.layers, self.devices)
            return self.model(inputs, ctx, self.kv.layers)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, H] -> fp32 logits [N, V]; last stage only."""
        if not self.is_last:
            raise RuntimeError("compute_logits: this stage does not hold the LM head")
        if self.leader is not None:
            self.leader.logits(hidden)
        with torch.inference_mode():
            last = self.devices[self.layer_end - 1]
            logits = self.model.compute_logits(hidden.to(last, DTYPES[self.dtype]))
            return logits if self.tp.is_single else self.tp.all_gather_last(logits)  # vocab shards

    def release(self, seq_id: str) -> None:
        """Free a sequence's KV blocks (unknown ids are ignored)."""
        self.kv.release(seq_id)

    def _check_inputs(self, batch: StepBatch, inputs: torch.Tensor) -> None:
        t, h = batch.num_tokens, self.config.hidden_size
        got = f"got {list(inputs.shape)} {inputs.dtype}"
        if not self.is_first:
            if list(inputs.shape) != [t, h] or not inputs.is_floating_point():
                raise ValueError(f"expected hidden states [{t}, {h}], {got}")
            return
        if inputs.dim() != 1 or inputs.shape[0] != t or inputs.is_floating_point():
            raise ValueError(f"expected {t} token ids [T] for the first stage, {got}")
        if inputs.device.type != "cpu":  # ids the engine sampled itself: in range by construction,
            return  # and reading them back would make the host wait for the device every step
        low, high = torch.stack(torch.aminmax(inputs)).tolist() if t else (0, 0)
        if low < 0 or high >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size})")


def _check_range(config: ModelConfig, model_dir, layer_start: int, layer_end: int) -> None:
    layers = config.num_hidden_layers
    if not 0 <= layer_start < layer_end <= layers:
        raise CheckpointError(
            f"{Path(model_dir) / 'config.json'}: layer range [{layer_start}, {layer_end}) "
            f"is outside the model's {layers} layers"
        )


def _stage_devices(layer_start: int, layer_end: int, device: str, tp: TPGroup, planned_ranges):
    """Each layer's device: the tensor-parallel rank's own, or layer_devices' spread over the
    GPU ranges planned_ranges() gives (None: equal shares)."""
    if tp.is_single:
        return layer_devices(layer_start, layer_end, device, planned_ranges())
    return dict.fromkeys(range(layer_start, layer_end), tp.device)


def _shard(model: StageModel, tp: TPGroup) -> StageModel:
    """This rank's share of the meta-built model (the whole model at TP 1)."""
    if not tp.is_single:
        from engine.sharding import shard_model  # TP=1 stages never import it

        shard_model(model, tp)
    return model


def _kv_token_shapes(model: StageModel, tp: TPGroup) -> list[tuple[int, ...]]:
    if tp.is_single:
        return model.kv_token_shapes()
    from engine.sharding import kv_token_shapes

    return kv_token_shapes(model)


def _check_choices(**fields: tuple[str, tuple]) -> None:
    for name, (value, choices) in fields.items():
        if value not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _fp8_setup(model: StageModel, model_dir, requested: str, device: torch.device,
               load_format: str) -> str:
    """Convert an FP8 checkpoint's layers to native FP8 when the device allows; the log's note."""
    if model.config.get("quantization_config") is None or load_format == "dummy":
        return ""
    mode, why = fp8_mode(requested, device, fp8_block(model))
    if mode == "dequantize":
        return f", FP8 weights dequantized ({why})"
    files = CheckpointFiles(model_dir)

    def has_scale(param: str) -> bool:
        names = model.checkpoint_names(param)
        return all(n + SCALE_SUFFIX in files for n in names)

    linears, stacks = convert_to_native(model, has_scale)
    return f", FP8 native ({linears} linears, {stacks} expert stacks; {why})"
