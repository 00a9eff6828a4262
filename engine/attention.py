"""Causal attention over a paged KV cache, batched: queries padded to [B, maxQ], context to [B, C].

Every step writes its new keys/values to the cache first, then each sequence's queries attend
over the cache rows of its context, query at position p seeing positions <= p. The layout
(padding indices and mask) is built once per step and shared by all layers. A step that mixes
decodes with prompt chunks runs them as two batches (StepParts), so a decode's one query is
not padded to the longest chunk.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from engine.batch import ForwardContext
from engine.paged_decode import decode_attention

# cuDNN's attention plans a new graph for every new key length, i.e. at every decode step:
# measured at ~9 ms per layer call on an H100 (bench/gpu/results.md). The others need no plan.
_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


@dataclass(frozen=True)
class AttentionLayout:
    """How a step's [T] queries pad into [B, maxQ] and which context rows each query sees."""

    max_query_len: int
    query_rows: torch.Tensor | None  # [B, maxQ] long rows of [T], pads repeat a real row; None:
    #                                  every sequence has maxQ tokens, so [T] just reshapes
    unpad_index: torch.Tensor | None  # [T] long: flat index into [B * maxQ] of each real query
    attn_mask: torch.Tensor | None  # [B, 1, maxQ, C] bool, True = may attend; None: see is_causal
    is_causal: bool  # no mask needed beyond the plain causal one (every chunk starts at 0, fills C)


def _build_layout(ctx: ForwardContext) -> AttentionLayout:
    qs, lens = ctx.query_start, ctx.context_lens
    counts = [qs[b + 1] - qs[b] for b in range(len(lens))]
    max_q, width = max(counts), ctx.context_slots.shape[1]
    device = ctx.context_slots.device
    if all(c == max_q for c in counts):  # every sequence brings as many tokens: a plain view
        rows = unpad = None
    else:
        rows, unpad = _padding(qs, counts, max_q, device)
    starts = [n - c for n, c in zip(lens, counts)]
    if max_q == 1:  # decode only: one query per sequence, at its last position
        mask = None if all(n == width for n in lens) else ctx.context_mask[:, None, None, :]
        return AttentionLayout(1, rows, unpad, mask, False)
    if all(s == 0 and c == width for s, c in zip(starts, counts)):  # equal fresh prompts
        return AttentionLayout(max_q, rows, unpad, None, True)
    i = torch.arange(max_q, device=device)
    counts_t = torch.tensor(counts, device=device)[:, None]
    # last context position each padded query sees (pads see what their last real query sees)
    last = torch.tensor(starts, device=device)[:, None] + torch.minimum(i[None, :], counts_t - 1)
    mask = torch.arange(width, device=device)[None, None, :] <= last[:, :, None]  # [B, maxQ, C]
    return AttentionLayout(max_q, rows, unpad, mask[:, None], False)


def _padding(
    qs: list[int], counts: list[int], max_q: int, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of [T] for each padded query [B, maxQ] (pads repeat the last real row), and back [T]."""
    i = torch.arange(max_q)[None, :]  # built on the CPU: nonzero() would sync a GPU
    counts_t = torch.tensor(counts)[:, None]
    rows = torch.tensor(qs[:-1])[:, None] + torch.minimum(i, counts_t - 1)
    unpad = (i < counts_t).flatten().nonzero().squeeze(1)
    return rows.to(device, non_blocking=True), unpad.to(device, non_blocking=True)


def attention_layout(ctx: ForwardContext) -> AttentionLayout:
    """The step's layout, built on first use and kept in the context for the other layers."""
    if ctx.layout is None:
        ctx.layout = _build_layout(ctx)
    return ctx.layout


@dataclass(frozen=True)
class StepParts:
    """A step's decodes (one new token each) apart from its prompt chunks (several), each part
    with its own context: in a mixed step a decode's single query is not padded to the longest
    chunk, nor its context to the longest context. A part is None when the step has none of it.
    """

    decode: ForwardContext | None
    decode_rows: torch.Tensor | None  # [Td] rows of the step's [T] tokens; None = all of them
    prefill: ForwardContext | None
    prefill_rows: torch.Tensor | None  # [Tp]; None = all of them

    @property
    def mixed(self) -> bool:
        return self.decode is not None and self.prefill is not None


def step_parts(ctx: ForwardContext) -> StepParts:
    """The step split once, on first use, and kept in the context for the other layers."""
    if ctx.parts is None:
        qs = ctx.query_start
        decodes = [b for b in range(ctx.num_seqs) if qs[b + 1] - qs[b] == 1]
        prefills = [b for b in range(ctx.num_seqs) if qs[b + 1] - qs[b] > 1]
        if not prefills:
            ctx.parts = StepParts(ctx, None, None, None)
        elif not decodes:
            ctx.parts = StepParts(None, None, ctx, None)
        else:
            ctx.parts = StepParts(*_subset(ctx, decodes), *_subset(ctx, prefills))
    return ctx.parts


def _subset(ctx: ForwardContext, seqs: list[int]) -> tuple[ForwardContext, torch.Tensor]:
    """The context of some of a step's sequences, and the rows of [T] their tokens occupy."""
    qs = ctx.query_start
    rows = torch.cat([torch.arange(qs[b], qs[b + 1]) for b in seqs]).to(ctx.positions.device)
    starts = [0]
    for b in seqs:
        starts.append(starts[-1] + qs[b + 1] - qs[b])
    lens = [ctx.context_lens[b] for b in seqs]
    pick = torch.tensor(seqs, device=ctx.context_slots.device)
    width = max(lens)
    return (
        ForwardContext(
            positions=ctx.positions[rows],
            slot_mapping=ctx.slot_mapping[rows],
            query_start=starts,
            context_lens=lens,
            context_slots=ctx.context_slots[pick, :width],
            context_mask=ctx.context_mask[pick, :width],
        ),
        rows,
    )


def write_cache(cache: torch.Tensor, ctx: ForwardContext, values: torch.Tensor) -> None:
    """cache [S, *shape] <- values [T, *shape] at the step's slots."""
    cache.index_copy_(0, ctx.slot_mapping, values.to(cache.dtype))


def gather_context(cache: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
    """cache [S, *shape] -> each sequence's context rows [B, C, *shape] (pads hold slot 0)."""
    # index_select, not cache[slots]: 3-5x faster on CPU (16 x 550 rows of 288: 1.4 vs 7.5 ms)
    rows = cache.index_select(0, ctx.context_slots.flatten())
    return rows.view(*ctx.context_slots.shape, *cache.shape[1:])


def pad_queries(x: torch.Tensor, layout: AttentionLayout, num_seqs: int) -> torch.Tensor:
    """x [T, ...] -> [B, maxQ, ...]."""
    if layout.query_rows is None:
        return x.view(num_seqs, -1, *x.shape[1:])
    return x[layout.query_rows]


def unpad_queries(x: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
    """x [B, maxQ, ...] -> [T, ...]."""
    flat = x.flatten(0, 1)
    return flat if layout.unpad_index is None else flat[layout.unpad_index]


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs) -> torch.Tensor:
    """F.scaled_dot_product_attention without the cuDNN backend (see _SDPA_BACKENDS)."""
    with sdpa_kernel(_SDPA_BACKENDS):
        return F.scaled_dot_product_attention(query, key, value, **kwargs)


def paged_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kv: tuple[torch.Tensor, torch.Tensor],
    ctx: ForwardContext,
    scale: float,
) -> torch.Tensor:
    """q [T, Hq, D], k/v [T, Hkv, D] -> [T, Hq, D]; stores k/v in kv = (k_cache, v_cache)."""
    k_cache, v_cache = kv
    write_cache(k_cache, ctx, k)
    write_cache(v_cache, ctx, v)
    if ctx.decode_tables is not None:  # one query per sequence, context through the block table
        return decode_attention(q, k_cache, v_cache, ctx.decode_tables, scale)
    parts = step_parts(ctx)
    if not parts.mixed:
        return padded_attention(q, k_cache, v_cache, ctx, scale)
    out = q.new_empty(q.shape[0], q.shape[1], v_cache.shape[-1])
    out[parts.decode_rows] = padded_attention(q[parts.decode_rows], k_cache, v_cache,
                                               parts.decode, scale)
    out[parts.prefill_rows] = padded_attention(q[parts.prefill_rows], k_cache, v_cache,
                                                parts.prefill, scale)
    return out


def padded_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, ctx: ForwardContext, scale: float
) -> torch.Tensor:
    """q [T, Hq, D], padded to [B, Hq, maxQ, D], against each sequence's gathered context (the
    caches already hold the step's keys/values) -> [T, Hq, D]."""
    layout = attention_layout(ctx)
    keys = gather_context(k_cache, ctx).transpose(1, 2)  # [B, Hkv, C, D]
    values = gather_context(v_cache, ctx).transpose(1, 2)
    queries = pad_queries(q, layout, ctx.num_seqs).transpose(1, 2)  # [B, Hq, maxQ, D]
    out = sdpa(
        queries,
        keys.to(q.dtype),
        values.to(q.dtype),
        attn_mask=layout.attn_mask,
        is_causal=layout.is_causal,
        scale=scale,
        enable_gqa=q.shape[1] != k_cache.shape[1],
    )
    return unpad_queries(out.transpose(1, 2), layout)  # [T, Hq, D]
