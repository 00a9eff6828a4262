"""The checkpoint fingerprint changes with what matters and only with that."""
import json

import pytest

from engine.errors import CheckpointError
from engine.fingerprint import checkpoint_fingerprint, describe_mismatch


@pytest.fixture
def ckpt(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (tmp_path / "tokenizer.json").write_text('{"vocab": {}}')
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 64)
    return tmp_path


def test_same_files_same_fingerprint(ckpt, tmp_path_factory):
    copy = tmp_path_factory.mktemp("copy")
    for f in ckpt.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert checkpoint_fingerprint(ckpt) == checkpoint_fingerprint(copy)


@pytest.mark.parametrize("name, data", [
    ("config.json", b'{"hidden_size": 16}'),
    ("tokenizer.json", b'{"vocab": {"a": 0}}'),
    ("model.safetensors", b"\0" * 65),  # a different size
    ("model-00002.safetensors", b"\0"),  # another shard
    ("model.safetensors.index.json", b"{}"),
])
def test_what_matters_changes_it(ckpt, name, data):
    before = checkpoint_fingerprint(ckpt)
    (ckpt / name).write_bytes(data)
    assert checkpoint_fingerprint(ckpt) != before


def test_weight_bytes_and_unrelated_files_do_not(ckpt):
    before = checkpoint_fingerprint(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"\1" * 64)  # same size: not read
    (ckpt / "README.md").write_text("hello")
    assert checkpoint_fingerprint(ckpt) == before


def test_not_a_checkpoint_is_a_one_line_error(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        checkpoint_fingerprint(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no weight files"):
        checkpoint_fingerprint(tmp_path)


def test_describe_mismatch_names_each_field_with_both_values():
    api = {"fingerprint": "aaa", "split_layer": 2, "dtype": "bfloat16", "hidden_size": 64}
    assert describe_mismatch(api, dict(api)) is None
    worker = dict(api, split_layer=3, dtype="float32")
    message = describe_mismatch(api, worker)
    assert "split_layer: expected 2, got 3" in message
    assert "dtype: expected 'bfloat16', got 'float32'" in message
    assert "fingerprint" not in message and "hidden_size" not in message
