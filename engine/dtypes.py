"""The dtypes a stage computes in and the wire carries, by the name configs and messages use.

One table for every layer: the stage builds its weights and KV cache from it, proto/convert.py
reads and writes tensors with it, and both roles' configs validate `dtype` against its keys.
"""
from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
