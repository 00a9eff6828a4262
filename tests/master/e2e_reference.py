"""The engine in-process over all layers: the greedy tokens an API under test must reproduce."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.batch import SeqChunk, StepBatch
from engine.stage import Stage


class Reference:
    """The engine in-process over all layers: the greedy tokens the API must reproduce."""

    def __init__(self, model_dir: Path, stop_ids: tuple[int, ...]):
        layers = json_layers(model_dir)
        self.stage = Stage.load(str(model_dir), 0, layers, dtype="float32",
                                kv_cache_bytes=16 * 2**20)
        self.stop_ids = set(stop_ids)
        self._count = 0

    def greedy(self, prompt: list[int], max_tokens: int) -> list[int]:
        """Up to max_tokens greedy ids; ends after a stop id (which is included)."""
        self._count += 1
        seq, out, pos, inputs = f"ref{self._count}", [], 0, list(prompt)
        try:
            while len(out) < max_tokens:
                batch = StepBatch((SeqChunk(seq, pos, len(inputs)),))
                hidden = self.stage.forward(batch, torch.tensor(inputs))  # [T, H]
                token = int(self.stage.compute_logits(hidden[-1:]).argmax(-1))
                out.append(token)
                pos, inputs = pos + len(inputs), [token]
                if token in self.stop_ids:
                    break
        finally:
            self.stage.release(seq)
        return out


def json_layers(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["num_hidden_layers"]
