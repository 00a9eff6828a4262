"""The KV cache's block lists mirrored on its device, so decode attention finds a sequence's
context without the host building index tensors each step.

Row r of `table` [max_seqs + 1, max_blocks] int32 holds the cache blocks of one sequence, in
position order; the last row belongs to no sequence and points at the cache's scratch block,
which the padding rows of a batch bucket write to and read from. Only blocks a sequence gains
are copied (one small copy every `block_size` tokens of a sequence), not the table per step.
"""
from __future__ import annotations

import torch


class BlockTable:
    """Sequence id -> a row of the device table; rows are handed out and taken back."""

    def __init__(self, max_seqs: int, max_blocks: int, scratch_block: int, device: torch.device):
        if max_seqs < 1 or max_blocks < 1:
            raise ValueError(f"a block table needs max_seqs >= 1 and max_blocks >= 1, "
                             f"got {max_seqs} and {max_blocks}")
        self.max_blocks = max_blocks
        self.scratch_row = max_seqs
        self.table = torch.full((max_seqs + 1, max_blocks), scratch_block, dtype=torch.int32,
                                device=device)
        self._free = list(range(max_seqs - 1, -1, -1))  # pop() hands out low rows first
        self._rows: dict[str, int] = {}  # seq_id -> its row
        self._synced: dict[str, int] = {}  # seq_id -> how many of its blocks the row holds

    def row(self, seq_id: str, blocks: list[int]) -> int | None:
        """The sequence's row, after copying the blocks it gained; None when no row is free or
        the sequence holds more blocks than a row (the caller runs the step another way)."""
        if len(blocks) > self.max_blocks:
            return None
        row = self._rows.get(seq_id)
        if row is None:
            if not self._free:
                return None
            row = self._rows[seq_id] = self._free.pop()
            self._synced[seq_id] = 0
        have = self._synced[seq_id]
        if len(blocks) > have:
            new = torch.tensor(blocks[have:], dtype=torch.int32)
            self.table[row, have : len(blocks)].copy_(new, non_blocking=True)
            self._synced[seq_id] = len(blocks)
        return row

    def release(self, seq_id: str) -> None:
        """Take a sequence's row back (unknown ids are ignored)."""
        row = self._rows.pop(seq_id, None)
        if row is not None:
            self._free.append(row)
            del self._synced[seq_id]
