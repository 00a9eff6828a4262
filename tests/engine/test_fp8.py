"""Block FP8: quantize/dequantize round trips within e4m3 error, on any weight shape."""
import pytest
import torch

from engine.fp8 import FP8_MAX, dequantize_block_fp8, quantize_block_fp8

# e4m3 keeps 3 mantissa bits: rounding to nearest errs by at most 2^-4 of the value, and by at
# most half the subnormal step (2^-10 of the block scale) near zero.
REL_ERR = 2.0**-4


def _error_bound(w: torch.Tensor, scale_inv: torch.Tensor, block=(128, 128)) -> torch.Tensor:
    scale = scale_inv.repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    scale = scale[: w.shape[0], : w.shape[1]]
    return w.abs() * REL_ERR + scale * 2.0**-10 + 1e-12


@pytest.mark.parametrize("shape", [(256, 384), (300, 200), (7, 130), (129, 1)])
def test_round_trip_is_within_fp8_error(shape):
    torch.manual_seed(0)
    w = torch.randn(shape) * torch.logspace(-3, 1, shape[1])  # blocks of very different scales
    q, scale_inv = quantize_block_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape
    assert scale_inv.dtype == torch.float32
    assert scale_inv.shape == (-(-shape[0] // 128), -(-shape[1] // 128))
    back = dequantize_block_fp8(q, scale_inv)
    assert back.dtype == torch.float32
    assert ((back - w).abs() <= _error_bound(w, scale_inv)).all()


def test_each_block_uses_its_full_range():
    w = torch.zeros(256, 256)
    w[:128, :128] = 1000.0
    w[128:, 128:] = 0.001
    q, scale_inv = quantize_block_fp8(w)
    assert q.float().abs().amax().item() == FP8_MAX
    assert scale_inv[1, 1].item() == pytest.approx(0.001 / FP8_MAX)
    back = dequantize_block_fp8(q, scale_inv)
    assert torch.allclose(back, w, rtol=REL_ERR)  # the small block is not crushed to zero


def test_bf16_source_and_custom_block():
    w = torch.randn(100, 70).to(torch.bfloat16)
    q, scale_inv = quantize_block_fp8(w, block=(32, 64))
    assert scale_inv.shape == (4, 2)
    back = dequantize_block_fp8(q, scale_inv, block=(32, 64))
    assert ((back - w.float()).abs() <= _error_bound(w.float(), scale_inv, (32, 64))).all()


def test_mismatched_scale_shape_is_a_clear_error():
    q, scale_inv = quantize_block_fp8(torch.randn(256, 256))
    with pytest.raises(ValueError, match=r"scale_inv has shape \(2, 1\), expected \(2, 2\)"):
        dequantize_block_fp8(q, scale_inv[:, :1])
    with pytest.raises(ValueError, match="2-D"):
        quantize_block_fp8(torch.randn(4, 4, 4))
