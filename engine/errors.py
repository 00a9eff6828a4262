"""The engine's two failures a caller handles: a bad checkpoint and a full KV cache."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be served; the message is one line naming the file or tensor."""


class KVCacheFull(RuntimeError):
    """A sequence needs more KV blocks than are free; nothing was allocated."""

    def __init__(self, seq_id: str, needed_tokens: int, free_tokens: int):
        super().__init__(
            f"KV cache full: sequence {seq_id!r} needs {needed_tokens} more token slots, "
            f"{free_tokens} are free"
        )
        self.seq_id = seq_id
        self.needed_tokens = needed_tokens
        self.free_tokens = free_tokens
