"""Is SDPA (bool mask + GQA) the decode bottleneck on CUDA? Time it against plain matmuls."""
import time

import torch
import torch.nn.functional as F


def manual(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """q [B, Hq, Q, D], k/v [B, Hkv, C, D] -> [B, Hq, Q, D] without SDPA."""
    b, hq, nq, d = q.shape
    hkv = k.shape[1]
    q = q.view(b, hkv, hq // hkv * nq, d)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, Hkv, G*Q, C]
    if attn_mask is not None:
        m = attn_mask.expand(b, 1, nq, k.shape[2]).repeat(1, 1, hq // hkv, 1)
        s = s.masked_fill(~m, float("-inf"))
    p = torch.softmax(s.float(), -1).to(v.dtype)
    return torch.matmul(p, v).view(b, hq, nq, d)


def timeit(fn, *a, **kw):
    for _ in range(10):
        fn(*a, **kw)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(200):
        fn(*a, **kw)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / 200 * 1e6


for b, c in ((1, 64), (16, 64), (16, 1024)):
    q = torch.randn(b, 28, 1, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(b, 4, c, 128, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    mask = torch.ones(b, 1, 1, c, dtype=torch.bool, device="cuda")
    sdpa_mask = timeit(F.scaled_dot_product_attention, q, k, v, attn_mask=mask, scale=0.1, enable_gqa=True)
    sdpa_nomask = timeit(F.scaled_dot_product_attention, q, k, v, scale=0.1, enable_gqa=True)
    man = timeit(manual, q, k, v, attn_mask=mask, scale=0.1)
    print(f"B={b} C={c}: sdpa+mask {sdpa_mask:.0f} us, sdpa no mask {sdpa_nomask:.0f} us, matmuls {man:.0f} us")
