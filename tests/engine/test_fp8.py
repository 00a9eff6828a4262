"""Block FP8: quantize/dequantize round trips within e4m3 error, on any weight shape."""
import re

import pytest
import torch

from engine.fp8 import FP8_MAX, dequantize_block_fp8, quantize_block_fp8

# e4m3 keeps 3 mantissa bits: rounding to nearest errs by at most 2^-4 of the value, and by at
# most half the subnormal step (2^-10 of the block scale) near zero.
REL_ERR = 2.0**-4
# what DeepSeek-V3 ships in FP8: the layers' linear weights (stacked experts included)
LINEAR_IN_LAYER = re.compile(r"^model\.layers\.\d+\..*_proj(_with_mqa)?(\.weight)?$")


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


def test_fp8_checkpoint_loads_to_its_bf16_source_within_fp8_error(tiny_checkpoint, pipeline, prompt):
    """`duet tiny-model --fp8` quantizes the same seeded bf16 weights: loading dequantizes them."""
    source = pipeline(tiny_checkpoint("deepseek_v3")).stages[0].model
    fp8 = pipeline(tiny_checkpoint("deepseek_v3", fp8=True)).stages[0].model
    quantized = 0
    for name, want in source.state_dict().items():
        got = fp8.state_dict()[name]
        if not LINEAR_IN_LAYER.match(name):
            assert torch.equal(got, want), name  # embedding, norms, router: stored as they were
            continue
        rows = want.unbind(0) if want.dim() == 3 else [want]  # stacked experts: one tensor a row
        for w, g in zip(rows, got.unbind(0) if got.dim() == 3 else [got]):
            _, scale_inv = quantize_block_fp8(w)
            assert ((g - w).abs() <= _error_bound(w, scale_inv)).all(), name
            assert not torch.equal(g, w), f"{name} was not quantized"
            quantized += 1
    assert quantized > 50


def test_fp8_checkpoint_logits_stay_close(tiny_checkpoint, pipeline, prompt):
    ids = prompt(24, seed=5)
    want = pipeline(tiny_checkpoint("deepseek_v3")).step([("a", 0, 24)], ids)
    got = pipeline(tiny_checkpoint("deepseek_v3", fp8=True), splits=(2,)).step([("a", 0, 24)], ids)
    cos = torch.nn.functional.cosine_similarity(got, want, dim=-1)  # [T]
    # ~2% weight noise keeps most rows' logits aligned; a token whose expert scores were nearly
    # tied may switch experts and move further, so the median is the measure
    assert cos.median() > 0.95 and cos.min() > 0.5
