"""Decode attention read straight from the paged KV cache: one query token per sequence.

Each sequence's context is found through its row of the cache's block table on the device, so
a step neither pads every sequence to the longest context nor builds index tensors on the host,
and its host work does not depend on context lengths (what a CUDA graph needs). One Triton
program per (sequence, KV head, block of query heads) runs an online softmax over its context,
the query heads of a group at once (GQA), or a block of heads against the shared latent rows
(MLA, absorbed).
A torch reference, row by row, serves CPUs and checks the kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

try:  # Triton ships with CUDA builds of torch; CPU-only installs use the reference
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None


@dataclass(frozen=True)
class DecodeTables:
    """Device tensors that place a decode step's sequences in the paged cache."""

    block_table: torch.Tensor  # [R, max_blocks] int32: cache blocks of each table row, in order
    seq_rows: torch.Tensor  # [B] int32: the block-table row of each sequence of the step
    context_lens: torch.Tensor  # [B] int32: context length after this step (>= 1)
    block_size: int


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, tables: DecodeTables, scale: float
) -> torch.Tensor:
    """q [B, Hq, Dk], k_cache [S, Hkv, Dk], v_cache [S, Hkv, Dv] (views allowed) -> [B, Hq, Dv].

    Query head h attends with KV head h // (Hq // Hkv) over slots [0, context_lens[b]) of its
    sequence. MLA passes its latent rows as both: keys [S, 1, kvr + r], values [S, 1, kvr].
    """
    if q.is_cuda and triton is not None:
        return _decode_triton(q, k_cache, v_cache, tables, scale)
    return decode_attention_reference(q, k_cache, v_cache, tables, scale)


def decode_attention_reference(q, k_cache, v_cache, tables: DecodeTables, scale: float) -> torch.Tensor:
    """The same function in plain torch, one sequence at a time (reads lengths on the host)."""
    bs, group = tables.block_size, q.shape[1] // k_cache.shape[1]
    out = q.new_empty(q.shape[0], q.shape[1], v_cache.shape[-1])
    for b, (row, n) in enumerate(zip(tables.seq_rows.tolist(), tables.context_lens.tolist())):
        blocks = tables.block_table[row, : -(-n // bs)].long()
        slots = (blocks[:, None] * bs + torch.arange(bs, device=blocks.device)).flatten()[:n]
        keys = k_cache[slots].repeat_interleave(group, dim=1).float()  # [n, Hq, Dk]
        values = v_cache[slots].repeat_interleave(group, dim=1).float()  # [n, Hq, Dv]
        scores = torch.einsum("hd,nhd->hn", q[b].float(), keys) * scale
        out[b] = torch.einsum("hn,nhd->hd", scores.softmax(-1), values).to(q.dtype)
    return out


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _splits(programs: int) -> int:
    """Context splits per (sequence, head block): enough programs to fill the GPU (flash-decoding);
    1 once the batch alone does. Chosen from host-known sizes, so a graph can hold it."""
    want = max(1, min(16, 256 // programs))
    return 1 << (want.bit_length() - 1)


def _decode_triton(q, k_cache, v_cache, tables: DecodeTables, scale: float) -> torch.Tensor:
    b, hq, dk = q.shape
    hkv, dv = k_cache.shape[1], v_cache.shape[-1]
    d1 = 1 << (dk.bit_length() - 1)  # the key dims split into a power of two and the rest
    d2 = dk - d1
    if dv != _pow2(dv) or q.stride(-1) != 1 or k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        return decode_attention_reference(q, k_cache, v_cache, tables, scale)
    out = q.new_empty(b, hq, dv)
    group = hq // hkv
    block_n = 32 if dk > 256 else 64  # MLA's 576-wide rows: fewer per tile, registers stay in bounds
    # query heads per program: a group of 7 (GQA) pads to 16; MLA's 128 heads split into 8
    block_g = min(max(16, _pow2(group)), 64 if dv <= 128 else 16)
    head_blocks = triton.cdiv(group, block_g)
    splits = _splits(b * hkv * head_blocks)
    # per split: unnormalised output [B, Hq, S, Dv], running max and sum [B, Hq, S] (fp32)
    part = torch.empty(b, hq, splits, dv + 2, device=q.device, dtype=torch.float32) if splits > 1 else out
    _decode_kernel[(b, hkv * head_blocks, splits)](
        q, k_cache, v_cache, out, part, tables.block_table, tables.seq_rows, tables.context_lens,
        scale, q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
        v_cache.stride(0), v_cache.stride(1), out.stride(0), out.stride(1),
        tables.block_table.stride(0),
        GROUP=group, BLOCK_G=block_g, HEAD_BLOCKS=head_blocks, SPLITS=splits, HQ=hq,
        D1=d1, D2=d2, BLOCK_D2=max(16, _pow2(d2)),
        DV=dv, KV_BLOCK=tables.block_size, BLOCK_N=block_n, num_warps=4 if dv <= 128 else 8,
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",  # fp32 stays fp32, not tf32
    )
    if splits > 1:
        _combine_kernel[(b, hq)](part, out, out.stride(0), out.stride(1), SPLITS=splits, DV=dv)
    return out


if triton is not None:

    @triton.jit
    def _decode_kernel(
        Q, K, V, O, PART, BT, ROWS, LENS, scale,
        sqb, sqh, sks, skh, svs, svh, sob, soh, sbt,
        GROUP: tl.constexpr, BLOCK_G: tl.constexpr, HEAD_BLOCKS: tl.constexpr,
        SPLITS: tl.constexpr, HQ: tl.constexpr, D1: tl.constexpr, D2: tl.constexpr,
        BLOCK_D2: tl.constexpr, DV: tl.constexpr, KV_BLOCK: tl.constexpr, BLOCK_N: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        b, split = tl.program_id(0), tl.program_id(2)
        kvh, head_block = tl.program_id(1) // HEAD_BLOCKS, tl.program_id(1) % HEAD_BLOCKS
        row = tl.load(ROWS + b).to(tl.int64)
        n_ctx = tl.load(LENS + b)
        per_split = tl.cdiv(tl.cdiv(n_ctx, SPLITS), BLOCK_N) * BLOCK_N
        lo = split * per_split
        hi = tl.minimum(lo + per_split, n_ctx)
        g = head_block * BLOCK_G + tl.arange(0, BLOCK_G)
        gmask = g < GROUP
        heads = kvh * GROUP + g
        d1 = tl.arange(0, D1)
        q_base = Q + b * sqb + heads[:, None] * sqh
        q1 = tl.load(q_base + d1[None, :], mask=gmask[:, None], other=0.0)  # [BG, D1]
        d2 = tl.arange(0, BLOCK_D2)
        if D2 > 0:
            q2 = tl.load(q_base + D1 + d2[None, :], mask=gmask[:, None] & (d2[None, :] < D2), other=0.0)
        dv = tl.arange(0, DV)
        m = tl.full([BLOCK_G], float("-inf"), tl.float32)
        denom = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, DV], tl.float32)
        for start in range(lo, hi, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            nmask = n < hi
            blk = tl.load(BT + row * sbt + n // KV_BLOCK, mask=nmask, other=0).to(tl.int64)
            slot = blk * KV_BLOCK + n % KV_BLOCK  # [BN]
            k_base = K + slot[:, None] * sks + kvh * skh
            k1 = tl.load(k_base + d1[None, :], mask=nmask[:, None], other=0.0)  # [BN, D1]
            s = tl.dot(q1, tl.trans(k1), input_precision=PRECISION)  # [BG, BN] fp32
            if D2 > 0:
                k2 = tl.load(k_base + D1 + d2[None, :], mask=nmask[:, None] & (d2[None, :] < D2), other=0.0)
                s += tl.dot(q2, tl.trans(k2), input_precision=PRECISION)
            s = tl.where(nmask[None, :], s * scale, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m - m_new)
            denom = denom * alpha + tl.sum(p, 1)
            v = tl.load(V + slot[:, None] * svs + kvh * svh + dv[None, :], mask=nmask[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m = m_new
        _store(O, PART, b, heads, gmask, split, acc, m, denom, sob, soh, HQ, SPLITS, DV)

    @triton.jit
    def _store(O, PART, b, heads, gmask, split, acc, m, denom, sob, soh,
               HQ: tl.constexpr, SPLITS: tl.constexpr, DV: tl.constexpr):
        """The output when unsplit; else this split's share in PART [B, HQ, SPLITS, DV + 2]:
        the unnormalised output, then the running max, then the running sum."""
        dv = tl.arange(0, DV)
        if SPLITS == 1:
            tl.store(O + b * sob + heads[:, None] * soh + dv[None, :],
                     (acc / denom[:, None]).to(O.dtype.element_ty), mask=gmask[:, None])
        else:
            base = PART + ((b * HQ + heads[:, None]).to(tl.int64) * SPLITS + split) * (DV + 2)
            tl.store(base + dv[None, :], acc, mask=gmask[:, None])
            tl.store(base + DV + tl.zeros([1, 1], tl.int32), m[:, None], mask=gmask[:, None])
            tl.store(base + DV + 1 + tl.zeros([1, 1], tl.int32), denom[:, None], mask=gmask[:, None])

    @triton.jit
    def _combine_kernel(PART, O, sob, soh, SPLITS: tl.constexpr, DV: tl.constexpr):
        b, h = tl.program_id(0), tl.program_id(1)
        sp = tl.arange(0, SPLITS)
        dv = tl.arange(0, DV)
        base = PART + ((b * tl.num_programs(1) + h).to(tl.int64) * SPLITS + sp) * (DV + 2)  # [S]
        m = tl.load(base + DV)
        denom = tl.load(base + DV + 1)
        acc = tl.load(base[:, None] + dv[None, :])  # [S, DV]
        top = tl.max(m, 0)
        w = tl.where(m > float("-inf"), tl.exp(m - top), 0.0)  # empty splits weigh nothing
        out = tl.sum(w[:, None] * acc, 0) / tl.sum(w * denom, 0)
        tl.store(O + b * sob + h * soh + dv, out.to(O.dtype.element_ty))
