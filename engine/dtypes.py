"""The dtypes a stage computes in and the wire carries, by the name configs and messages use.

One table for every layer: the stage builds its weights and KV cache from it, proto/convert.py
reads and writes tensors with it. Both roles' configs validate `dtype` against
engine/dtype_choices.py, the same names without torch (a bad config fails before torch loads).
"""
from __future__ import annotations

import torch

from engine.dtype_choices import DTYPE_CHOICES

DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_CHOICES}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
