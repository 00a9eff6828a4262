"""FP8 block-quantized checkpoints load to their bf16 source's weights, within FP8 error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from engine.batch import SeqChunk, StepBatch
from engine.stage import Stage
from engine.tiny_model import FP8_BLOCK, quantize_fp8, write_shards

KV = 2**20


def fp8_copy(src: Path, dst: Path) -> Path:
    """The checkpoint with its linear weights in FP8 e4m3 + 128x128 weight_scale_inv."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model*.safetensors*"))
    index = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    tensors = {}
    for shard in sorted(set(index.values())):
        tensors.update(load_file(str(src / shard)))
    config = json.loads((src / "config.json").read_text())
    write_shards(quantize_fp8(tensors), dst, config["num_hidden_layers"])
    config["quantization_config"] = {
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
        "weight_block_size": list(FP8_BLOCK),
    }
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.fixture(params=["llama", "deepseek_v3"])
def pair(request, tiny_checkpoint, tmp_path) -> tuple[Path, Path]:
    """(bf16 checkpoint, its FP8 version): deepseek_v3 through `tiny-model --fp8`, as shipped."""
    if request.param == "llama":
        src = tiny_checkpoint("llama")
        return src, fp8_copy(src, tmp_path / "fp8")
    pytest.importorskip("engine.models.deepseek")
    return tiny_checkpoint("deepseek_v3"), tiny_checkpoint("deepseek_v3", fp8=True)


def test_fp8_checkpoint_loads_to_the_bf16_weights_within_fp8_error(pair):
    src, fp8 = pair
    index = json.loads((fp8 / "model.safetensors.index.json").read_text())["weight_map"]
    quantized = {n[: -len("_scale_inv")] for n in index if n.endswith("weight_scale_inv")}
    want_stage = Stage.load(src, 1, 4, kv_cache_bytes=KV)
    want = want_stage.model.state_dict()
    got = Stage.load(fp8, 1, 4, kv_cache_bytes=KV).model.state_dict()
    assert got.keys() == want.keys()
    checked = 0
    for name, w in want.items():
        sources = want_stage.model.checkpoint_names(name)  # several for stacked experts
        if not quantized.intersection(sources):
            assert torch.equal(got[name], w), name  # norms, router, head: untouched
            continue
        checked += len(sources)
        # e4m3: 2^-4 relative rounding, plus the subnormal step of the block scale near zero
        bound = w.abs() * 2.0**-4 + w.abs().max() / 448 * 2.0**-9
        err = (got[name] - w).abs()
        assert (err <= bound).all(), name
        assert err.max() > 0, name  # it really went through FP8
    in_stage = [n for n in quantized if any(n.startswith(f"model.layers.{i}.") for i in (1, 2, 3))]
    assert checked == len(in_stage) > 0


def test_fp8_stage_logits_stay_close_to_bf16_source(tiny_checkpoint, tmp_path, prompt):
    # dense only: a MoE router may pick other experts after FP8 rounding, by design
    src = tiny_checkpoint("llama")
    fp8 = fp8_copy(src, tmp_path / "fp8")
    ids = torch.tensor(prompt(10))
    batch = StepBatch((SeqChunk("a", 0, 10),))
    logits = []
    for ckpt in (src, fp8):
        stage = Stage.load(ckpt, 0, 4, kv_cache_bytes=KV)
        logits.append(stage.compute_logits(stage.forward(batch, ids)))
    rel = (logits[0] - logits[1]).norm() / logits[0].norm()
    assert 0 < rel < 0.1
