"""`duet tiny-model`: reproducible bytes, the Hugging Face layout, a working tokenizer."""
from __future__ import annotations

import json

import jinja2
import pytest
from tokenizers import Tokenizer

from duet.cli import main
from engine.tiny_model import write_tiny_model


def files_of(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes_other_seed_other_weights(tiny_checkpoint, tmp_path):
    first = tiny_checkpoint("qwen2")
    again = write_tiny_model("qwen2", tmp_path / "again")
    assert files_of(first) == files_of(again)
    other = files_of(write_tiny_model("qwen2", tmp_path / "other", seed=1))
    same = files_of(first)
    assert other["config.json"] == same["config.json"]
    assert other["model-00002-of-00004.safetensors"] != same["model-00002-of-00004.safetensors"]


def test_layout_tokenizer_and_chat_template(ckpt, arch):
    names = {p.name for p in ckpt.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json",
            "tokenizer.json", "tokenizer_config.json"} <= names
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2 and shards <= names
    config = json.loads((ckpt / "config.json").read_text())
    tokenizer = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    assert tokenizer.get_vocab_size() <= config["vocab_size"]
    template = json.loads((ckpt / "tokenizer_config.json").read_text())["chat_template"]
    text = jinja2.Template(template).render(
        messages=[{"role": "user", "content": "Hello, world"}], add_generation_prompt=True,
        bos_token="<s>",
    )
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert "Hello" in tokenizer.decode(ids) and max(ids) < config["vocab_size"]
    generation = json.loads((ckpt / "generation_config.json").read_text())
    assert generation["temperature"] == 0.6 and generation["top_p"] == 0.95


def test_cli_writes_a_checkpoint(tmp_path, capsys):
    assert main(["tiny-model", "--arch", "llama", "--layers", "2", "--seed", "3", str(tmp_path / "m")]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["architectures"] == ["LlamaForCausalLM"]


@pytest.mark.parametrize("argv, message", [
    (["--arch", "qwen2", "--layers", "1"], "num_layers must be >= 2"),
    (["--arch", "llama", "--fp8"], "--fp8 is for deepseek_v3 only"),
])
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert main(["tiny-model", *argv, str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("duet: error: ") and message in err and err.count("\n") == 1
