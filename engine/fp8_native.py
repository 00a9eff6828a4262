"""Native FP8: checkpoint weights stay float8_e4m3fn + 128x128 block scales on the GPU.

`fp8_mode` decides per stage ("native" needs CUDA compute capability >= 8.9 and triton; CPU and
older GPUs dequantize at load, as before); `convert_to_native` swaps, on the meta-built model,
each nn.Linear whose checkpoint weight has a `weight_scale_inv` for an `FP8Linear`, and each
expert stack for its FP8 form. Parameter names stay the checkpoint's, so loading maps 1:1.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.fp8 import FP8_DTYPE
from engine.fp8_gemm import QUANT_BLOCK, fp8_matmul, triton_available

FP8_MODES = ("native", "dequantize")
SCALE_SUFFIX = "_scale_inv"  # `<name>.weight_scale_inv` next to `<name>.weight`


def fp8_mode(requested: str, device: torch.device, block: tuple[int, int]) -> tuple[str, str]:
    """("native" | "dequantize", why) for a stage whose first layer lives on `device`."""
    if requested not in FP8_MODES:
        raise ValueError(f"fp8 must be one of {', '.join(FP8_MODES)}, got {requested!r}")
    if requested == "dequantize":
        return "dequantize", "fp8 = dequantize"
    if device.type != "cuda":
        return "dequantize", f"{device.type} has no FP8 matrix units"
    cap = torch.cuda.get_device_capability(device)
    if cap < (8, 9):
        return "dequantize", f"compute capability {cap[0]}.{cap[1]} < 8.9"
    if not triton_available():
        return "dequantize", "triton is not installed"
    if tuple(block) != (QUANT_BLOCK, QUANT_BLOCK):
        return "dequantize", f"weight_block_size {list(block)} is not 128x128"
    return "native", f"compute capability {cap[0]}.{cap[1]}"


def keep_dtypes_(module: nn.Module, dtypes: dict[str, torch.dtype]) -> None:
    """Undo a cast of the named parameters (model.to(bf16) would turn FP8 weights into bf16)."""
    for name, dtype in dtypes.items():
        tensor = getattr(module, name)
        if tensor.dtype != dtype:
            tensor.data = tensor.data.to(dtype)


def fp8_parameter(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=FP8_DTYPE), requires_grad=False)


def scale_parameter(*shape: int) -> nn.Parameter:
    """fp32 scales of 128x128 blocks for a weight of trailing dims shape[-2:] (partial edges)."""
    *lead, rows, cols = shape
    blocks = (-(-rows // QUANT_BLOCK), -(-cols // QUANT_BLOCK))
    return nn.Parameter(torch.empty(*lead, *blocks, dtype=torch.float32), requires_grad=False)


class FP8Linear(nn.Module):
    """y = x W^T (+ b) with W e4m3 [out, in] and scales [ceil(out/128), ceil(in/128)]."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = fp8_parameter(out_features, in_features)
        self.weight_scale_inv = scale_parameter(out_features, in_features)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        keep_dtypes_(self, {"weight": FP8_DTYPE, "weight_scale_inv": torch.float32})
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in] -> [..., out] in x's dtype."""
        flat = x.reshape(-1, self.in_features)
        out = fp8_matmul(flat, self.weight[None], self.weight_scale_inv[None])
        if self.bias is not None:
            out = out + self.bias
        return out.view(*x.shape[:-1], self.out_features)


def convert_to_native(model: nn.Module, has_scale) -> tuple[int, int]:
    """Swap FP8-stored linears and expert stacks to their FP8 forms (model still on meta).

    has_scale(param_name) says whether that parameter's checkpoint tensors come with block
    scales. A parent lists children to keep dequantized in `fp8_keep_dequantized` (MLA's
    kv_b_proj, whose weight is sliced per head for weight absorption). Returns the counts.
    """
    linears, stacks = [], []
    for prefix, parent in model.named_modules():
        keep = getattr(parent, "fp8_keep_dequantized", ())
        for name, child in parent.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if isinstance(child, nn.Linear) and name not in keep and has_scale(f"{full}.weight"):
                linears.append((parent, name, child))
            elif hasattr(child, "use_fp8") and has_scale(f"{full}.{child.fp8_probe}"):
                stacks.append(child)
    for parent, name, child in linears:
        setattr(parent, name, FP8Linear(child.in_features, child.out_features,
                                        child.bias is not None))
    for stack in stacks:
        stack.use_fp8()
    return len(linears), len(stacks)
