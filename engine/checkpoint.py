"""Which safetensors file holds each tensor, and reading just the tensors asked for."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from engine.config import read_json
from engine.errors import CheckpointError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class CheckpointFiles:
    """The tensor -> file map of a checkpoint folder (its index, or the single file's header)."""

    def __init__(self, model_dir: str | Path):
        self.model_dir = Path(model_dir)
        index = self.model_dir / INDEX_FILE
        if index.exists():
            self.source = index
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: no 'weight_map' object")
            self.weight_map: dict[str, str] = {str(k): str(v) for k, v in weight_map.items()}
        elif (self.model_dir / SINGLE_FILE).exists():
            self.source = self.model_dir / SINGLE_FILE
            with _open(self.source) as f:  # the header only
                self.weight_map = {name: SINGLE_FILE for name in f.keys()}
        else:
            raise CheckpointError(f"{self.model_dir}: no {SINGLE_FILE} or {INDEX_FILE}")

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def path_of(self, name: str) -> Path:
        return self.model_dir / self.weight_map[name]

    def files(self) -> list[str]:
        return sorted(set(self.weight_map.values()))


def _open(path: Path):
    if not path.exists():
        raise CheckpointError(f"{path}: file not found")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


class TensorReader:
    """Reads named tensors, opening each file on first need and keeping it open until close()."""

    def __init__(self, files: CheckpointFiles):
        self.files = files
        self._stack = contextlib.ExitStack()
        self._open: dict[Path, object] = {}

    def __enter__(self) -> "TensorReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stack.close()
        self._open.clear()

    @property
    def opened(self) -> list[Path]:
        return list(self._open)

    def _handle(self, name: str):
        """(file, open handle) of a tensor, opening the file on first need."""
        path = self.files.path_of(name)
        handle = self._open.get(path)
        if handle is None:
            handle = self._open[path] = self._stack.enter_context(_open(path))
        return path, handle

    def get(self, name: str) -> torch.Tensor:
        """The tensor as stored (dtype and all); CheckpointError names the file when it lacks it."""
        path, handle = self._handle(name)
        try:
            return handle.get_tensor(name)
        except SafetensorError as e:
            raise CheckpointError(f"{path}: cannot read tensor {name!r} ({e})") from None

    def get_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """Rows (dim 0) or columns (dim 1) [start, stop) of a tensor, reading only those bytes
        (tensor parallelism: each rank its share); stop is clipped to the tensor's size."""
        path, handle = self._handle(name)
        try:
            part = handle.get_slice(name)
            size = part.get_shape()[dim]
            if not 0 <= start < min(stop, size):
                raise CheckpointError(f"{path}: tensor {name!r} has {size} rows on dim {dim}, "
                                      f"cannot take [{start}, {stop})")
            return part[start:stop] if dim == 0 else part[:, start:stop]
        except SafetensorError as e:
            raise CheckpointError(f"{path}: cannot read tensor {name!r} ({e})") from None
