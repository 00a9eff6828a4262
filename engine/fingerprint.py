"""Say whether two processes serve the same checkpoint, split the same way, in the same dtype.

The fingerprint hashes config.json, the tokenizer files and the weight-file manifest (names,
sizes and the safetensors index) -- never the weight bytes, which can be hundreds of GB.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from engine.errors import CheckpointError

# Files that change what the model computes or how text maps to tokens.
TOKENIZER_PATTERNS = (
    "tokenizer*", "special_tokens_map.json", "vocab.*", "merges.txt", "chat_template*",
    "added_tokens.json", "generation_config.json",
)
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt")
INDEX_PATTERNS = ("*.safetensors.index.json", "*.bin.index.json")

# What both ends of the pipeline must agree on; `split_layer` is the master's
# head_layer_end and the worker's layer_start.
HANDSHAKE_FIELDS = ("fingerprint", "split_layer", "dtype", "hidden_size")


def _matching(model_dir: Path, patterns: tuple[str, ...]) -> list[Path]:
    found = {p for pattern in patterns for p in model_dir.glob(pattern) if p.is_file()}
    return sorted(found, key=lambda p: p.name)


def checkpoint_fingerprint(model_dir: str | Path) -> str:
    """sha256 hex digest of config.json, tokenizer files, and the weight-file manifest."""
    model_dir = Path(model_dir)
    config = model_dir / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{model_dir}: no config.json, not a checkpoint directory")
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        # Length-prefixed so that no two different inputs hash the same stream.
        digest.update(f"{label}\0{len(data)}\0".encode())
        digest.update(data)

    add("config.json", config.read_bytes())
    for path in _matching(model_dir, TOKENIZER_PATTERNS + INDEX_PATTERNS):
        add(path.name, path.read_bytes())
    weights = _matching(model_dir, WEIGHT_PATTERNS)
    if not weights:
        raise CheckpointError(f"{model_dir}: no weight files (*.safetensors) found")
    for path in weights:
        add("weight:" + path.name, str(path.stat().st_size).encode())
    return digest.hexdigest()


def describe_mismatch(expected: dict, actual: dict) -> str | None:
    """None when the HANDSHAKE_FIELDS present in both dicts agree; else one readable line
    naming every differing field with both values."""
    diffs = [
        f"{name}: expected {expected[name]!r}, got {actual[name]!r}"
        for name in HANDSHAKE_FIELDS
        if name in expected and name in actual and expected[name] != actual[name]
    ]
    return "; ".join(diffs) if diffs else None
