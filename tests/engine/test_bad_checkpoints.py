"""Bad checkpoints fail with one readable line naming the file or tensor, not a traceback."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.batch import SeqChunk, StepBatch
from engine.errors import CheckpointError
from engine.stage import Stage

SHARD2 = "model-00002-of-00004.safetensors"  # holds layer 1


@pytest.fixture
def work(tiny_checkpoint, tmp_path) -> Path:
    """A private copy of the tiny llama checkpoint to break."""
    return Path(shutil.copytree(tiny_checkpoint("llama"), tmp_path / "ckpt"))


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def edit_index(work: Path, fn) -> None:
    path = work / "model.safetensors.index.json"
    index = json.loads(path.read_text())
    fn(index["weight_map"])
    path.write_text(json.dumps(index))


def edit_shard(work: Path, fn) -> None:
    tensors = load_file(str(work / SHARD2))
    fn(tensors)
    save_file(tensors, str(work / SHARD2))


def fails(work: Path, start=0, end=4) -> str:
    with pytest.raises(CheckpointError) as info:
        Stage.load(work, start, end, kv_cache_bytes=2**20)
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, ValueError)
    return message


def test_missing_config(work):
    (work / "config.json").unlink()
    assert fails(work) == f"{work / 'config.json'}: file not found"


def test_config_that_is_not_json(work):
    (work / "config.json").write_text("{not json")
    assert fails(work).startswith(f"{work / 'config.json'}: not readable JSON")


def test_config_without_a_required_field(work):
    config = json.loads((work / "config.json").read_text())
    del config["hidden_size"]
    (work / "config.json").write_text(json.dumps(config))
    assert fails(work) == f"{work / 'config.json'}: field 'hidden_size' is missing"


def test_unknown_architecture_lists_the_supported_ones(work):
    edit_json(work / "config.json", architectures=["GPT2LMHeadModel"])
    message = fails(work)
    assert "'GPT2LMHeadModel' is not supported" in message
    assert "LlamaForCausalLM" in message and "DeepseekV3ForCausalLM" in message


@pytest.mark.parametrize("start, end", [(0, 5), (-1, 2), (2, 2), (3, 1)])
def test_layer_range_out_of_bounds(work, start, end):
    message = fails(work, start, end)
    assert f"layer range [{start}, {end})" in message and "4 layers" in message


def test_missing_shard_file_is_named(work):
    (work / SHARD2).unlink()
    assert fails(work, 1, 2) == f"{work / SHARD2}: file not found"
    Stage.load(work, 2, 4, kv_cache_bytes=2**20)  # ranges not in that file still load


def test_missing_weight_files_altogether(work):
    for p in work.glob("model*.safetensors*"):
        p.unlink()
    assert "no model.safetensors or model.safetensors.index.json" in fails(work)


def test_tensor_missing_from_the_index_is_named(work):
    edit_index(work, lambda m: m.pop("model.layers.1.mlp.up_proj.weight"))
    message = fails(work)
    assert "model.safetensors.index.json: missing tensors model.layers.1.mlp.up_proj.weight" in message


def test_tensor_missing_from_its_file_names_file_and_tensor(work):
    edit_shard(work, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    message = fails(work)
    assert message.startswith(f"{work / SHARD2}: cannot read tensor 'model.layers.1.mlp.up_proj.weight'")


def test_tensor_of_the_wrong_shape_names_tensor_file_and_shapes(work):
    name = "model.layers.1.mlp.up_proj.weight"

    def transpose(t):
        t[name] = t[name].t().contiguous()

    edit_shard(work, transpose)
    assert fails(work) == f"{work / SHARD2}: tensor '{name}' has shape [64, 128], expected [128, 64]"


def test_corrupt_shard_is_named(work):
    (work / SHARD2).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage")
    assert fails(work).startswith(f"{work / SHARD2}: not a readable safetensors file")


def test_unsupported_rope_type_is_named(work):
    edit_json(work / "config.json", rope_scaling={"rope_type": "su", "factor": 2.0})
    assert "rope type 'su' is not supported" in fails(work)


def test_bad_stage_options_name_the_field(work):
    with pytest.raises(ValueError, match="dtype must be one of"):
        Stage.load(work, 0, 4, dtype="int8")
    with pytest.raises(ValueError, match="load_format must be one of"):
        Stage.load(work, 0, 4, load_format="gguf")
    with pytest.raises(ValueError, match="kv_cache_bytes"):
        Stage.load(work, 0, 4, kv_cache_bytes=10)


def test_bad_inputs_to_forward_are_refused_before_touching_the_cache(work):
    head = Stage.load(work, 0, 2, kv_cache_bytes=2**20)
    batch = StepBatch((SeqChunk("a", 0, 3),))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 129280\)"):
        head.forward(batch, torch.tensor([1, 2, 10**6]))
    with pytest.raises(ValueError, match="expected 3 token ids"):
        head.forward(batch, torch.tensor([1, 2]))
    tail = Stage.load(work, 2, 4, kv_cache_bytes=2**20)
    with pytest.raises(ValueError, match=r"expected hidden states \[3, 64\]"):
        tail.forward(batch, torch.zeros(3, 32))
    assert head.kv.used_tokens == 0 and tail.kv.used_tokens == 0


@pytest.mark.parametrize("device, message", [
    ("gpu", "is not a torch device"),
    ("cuda:7", "CUDA devices"),
    ("meta", "device must be cpu, cuda or cuda:N"),
])
def test_a_device_the_host_lacks_is_refused_naming_it(work, device, message):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this host has 8 GPUs")
    with pytest.raises(ValueError, match=message) as info:
        Stage.load(work, 0, 4, device=device)
    assert repr(device) in str(info.value)
