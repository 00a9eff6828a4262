"""Stages on CUDA give the CPU's logits; on a host of several GPUs, spread layers give them too.

Skipped where torch sees no GPU (CI); run on a GPU host with `pytest tests/engine -k cuda`.
"""
from __future__ import annotations

import pytest
import torch

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
needs_two = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="fewer than 2 GPUs")


def logits(pipe, ids: list[int]) -> torch.Tensor:
    return pipe.step([("a", 0, len(ids))], ids).cpu()


@needs_cuda
def test_cuda_stages_match_cpu_stages(ckpt, pipeline, prompt):
    ids = prompt(17)
    want = logits(pipeline(ckpt, splits=(2,)), ids)
    cuda = pipeline(ckpt, splits=(2,), device="cuda:0")
    assert all(p.is_cuda for s in cuda.stages for p in s.model.parameters())
    torch.testing.assert_close(logits(cuda, ids), want, atol=1e-4, rtol=0)
    assert cuda.greedy("g", ids, 8) == pipeline(ckpt, splits=(2,)).greedy("g", ids, 8)


@needs_two
def test_layers_spread_over_gpus_match_one_gpu(ckpt, pipeline, prompt):
    ids = prompt(17)
    spread = pipeline(ckpt, device="cuda")
    assert len(set(spread.stages[0].devices.values())) == torch.cuda.device_count()
    want = logits(pipeline(ckpt, device="cuda:0"), ids)
    torch.testing.assert_close(logits(spread, ids), want, atol=1e-5, rtol=0)
