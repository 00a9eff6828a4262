"""Which rows of a step's hidden states are finite, known without a wait of their own.

The tail used to read `isfinite(hidden)` before its forward: one more host wait on the device
per step (bench/gpu/host_overhead.md, "hh2"). Now the check runs on the device beside the
forward, its flags are copied to pinned host memory in the same stream, and the host reads
them after the sampler's read has waited for that stream anyway. Non-finite rows go through
the forward as zeros (their results are discarded and their sequences failed), so a NaN
cannot reach any other row through a batch-wide reduction such as an activation scale.
"""
from __future__ import annotations

import torch


class RowFlags:
    """hidden [T, H] -> `cleaned` (non-finite values zeroed, to forward) and, after the
    forward, which planned sequences had a non-finite row (`failed`)."""

    def __init__(self, hidden: torch.Tensor):
        self.cleaned, self.host, self.ready = hidden, None, None
        if not hidden.numel():
            return
        finite = torch.isfinite(hidden).all(dim=1)  # [T] bool, on the device
        self.cleaned = torch.nan_to_num(hidden, nan=0.0, posinf=0.0, neginf=0.0)
        if hidden.is_cuda:
            self.host = torch.empty(finite.shape, dtype=torch.bool, pin_memory=True)
            self.host.copy_(finite, non_blocking=True)
            self.ready = torch.cuda.Event()
            self.ready.record()  # on the current stream, as the forward and the sampler
        else:
            self.host = finite

    def failed(self, planned) -> set[int]:
        """The `index` of each planned sequence (worker/tail.py PlannedSeq) with a row that
        is not finite. Waits only if the stream has not reached the copy yet (no sampling row
        in the step); after the sampler's read it has."""
        if self.host is None:
            return set()
        if self.ready is not None:
            self.ready.synchronize()
        flags = self.host.tolist()  # [T]
        if all(flags):
            return set()
        return {p.index for p in planned if not all(flags[r] for r in p.rows)}
