"""What one forward step runs: which sequences, where they are, and the tensors attention needs."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SeqChunk:
    """The new tokens of one sequence in a step: positions [start_pos, start_pos + num_tokens)."""

    seq_id: str
    start_pos: int
    num_tokens: int

    @property
    def end_pos(self) -> int:
        return self.start_pos + self.num_tokens


@dataclass(frozen=True)
class StepBatch:
    """One step's sequences, in the order their new tokens are laid out in the input tensor.

    A prefill chunk has num_tokens >= 1 at any start_pos; a decode is num_tokens == 1.
    """

    chunks: tuple[SeqChunk, ...]

    @property
    def num_tokens(self) -> int:
        return sum(c.num_tokens for c in self.chunks)

    def last_token_rows(self) -> list[int]:
        """Row of each sequence's last new token in the flat [T, ...] layout."""
        rows, offset = [], 0
        for c in self.chunks:
            offset += c.num_tokens
            rows.append(offset - 1)
        return rows


@dataclass
class ForwardContext:
    """Per-step tensors that attention layers read; built once per step by the KV cache.

    T = new tokens in the step, B = sequences, C = longest context after the step.
    """

    positions: torch.Tensor  # [T] long: absolute position of each new token
    slot_mapping: torch.Tensor  # [T] long: flat KV slot each new token's entry is written to
    query_start: list[int]  # B + 1 offsets of each sequence's new tokens in [T]
    context_lens: list[int]  # [B] context length of each sequence after this step
    context_slots: torch.Tensor | None  # [B, C] long: flat slots of each sequence's context,
    #                                     0-padded; None in a decode step that has decode_tables
    context_mask: torch.Tensor | None  # [B, C] bool: True where context_slots is a real entry
    # How queries pad into [B, maxQ] and which context each sees, derived once per step:
    # an engine.attention.AttentionLayout, filled on first use by engine.attention.attention_layout.
    layout: object | None = None
    # The step's decodes apart from its prompt chunks (engine.attention.StepParts), filled on
    # first use by engine.attention.step_parts.
    parts: object | None = None
    # Decode-only steps run from static buffers (engine.decode_graphs): an
    # engine.paged_decode.DecodeTables that attention reads the context through instead.
    decode_tables: object | None = None

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens)
