"""Memory for a model built on the meta device (shapes only), without the slow path.

Module.to_empty calls torch.empty_like, and empty_like of a meta tensor runs a Python
decomposition that imports sympy (~1 s of every stage's and every tiny checkpoint's start-up,
several on a loaded 2-core host). torch.empty of the same shape and dtype skips it; the
meta-built weights are all contiguous, so the layout is the same.
"""
from __future__ import annotations

import torch
from torch import nn


def to_empty(module: nn.Module, device: torch.device, recurse: bool = True) -> nn.Module:
    """module.to_empty(device=device, recurse=recurse), uninitialised memory on `device`."""
    return module._apply(lambda t: torch.empty(t.shape, dtype=t.dtype, device=device),
                         recurse=recurse)
