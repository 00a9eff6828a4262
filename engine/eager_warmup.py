"""Every eager row count a stage will run, once, when it loads (CUDA only).

cuBLAS chooses a kernel the first time it sees a product's row count, ~4 ms per weight shape on
an H200 (engine/gemv.py): an eager step at a new token count took 11-45 ms longer on a 14-layer
7B stage than the same step again (bench/gpu/runs/s9_call3_prefill_sweep.json), and prompts
bring new counts at almost every eager step. Eager products run at padded row counts
(gemv.padded_rows), so a step of each count from PAD_ABOVE + PAD_TO up to the largest step
expected covers them all; the last stage also runs its LM head at every row count up to
PAD_ABOVE (the sequences sampling in one step). The warm-up sequence is released after each
step: the cache is left as it was.
"""
from __future__ import annotations

import logging
import time

import torch

from engine import gemv
from engine.batch import SeqChunk, StepBatch
from engine.dtypes import DTYPES

log = logging.getLogger("duet.engine.load")

WARM_TOKENS = 2048  # the master's default step_token_budget: the largest eager step expected
WARM_SEQ = "\0eager-warm-up"  # no request's id: ids are printable


def eager_row_counts(max_tokens: int) -> list[int]:
    """The padded counts of eager steps of PAD_ABOVE + 1 .. max_tokens tokens."""
    first = gemv.padded_rows(gemv.PAD_ABOVE + 1)
    return list(range(first, gemv.padded_rows(max_tokens) + 1, gemv.PAD_TO))


def warm_eager_steps(stage, max_tokens: int = WARM_TOKENS) -> None:
    """Run one single-sequence step of every padded count (within the KV cache and the
    model's positions) and one mixed step; then, on the last stage, the LM head at
    2 .. PAD_ABOVE rows. Every warm-up sequence is released."""
    started = time.perf_counter()
    free = stage.kv.capacity_tokens - stage.kv.used_tokens
    limit = min(free, stage.config.max_position_embeddings)
    counts = [n for n in eager_row_counts(max_tokens) if n <= limit]
    for n in counts:
        _run(stage, [SeqChunk(WARM_SEQ, 0, n)])
    if _mixed_slots(stage.kv.block_size) <= free:
        _warm_mixed(stage)
    if stage.is_last:
        for rows in range(2, gemv.PAD_ABOVE + 1):
            stage.compute_logits(torch.zeros(rows, stage.config.hidden_size,
                                             dtype=DTYPES[stage.dtype], device=stage.device))
    if stage.device.type == "cuda":
        torch.cuda.synchronize(stage.device)
    log.info("ran eager steps of %s tokens once (cuBLAS kernels chosen) in %.2f s",
             f"{counts[0]}..{counts[-1]}" if counts else "no", time.perf_counter() - started)


# The mixed step: 16 sequences of unequal lengths decoding beside 4 new prompts (176 tokens:
# past the graphs), so that attention with masks (decodes apart from prompts, engine/attention.py)
# runs once too, as the first burst of prompts joining running sequences would.
MIXED_DECODES, MIXED_PROMPTS, MIXED_PROMPT_LEN = 16, 4, 40


def _mixed_slots(block_size: int) -> int:
    """KV slots the mixed step holds at most (whole blocks per sequence)."""
    longest = MIXED_PROMPT_LEN + MIXED_DECODES  # the last decode's context
    return (MIXED_DECODES + MIXED_PROMPTS) * -(-longest // block_size) * block_size


def _warm_mixed(stage) -> None:
    decodes = [f"{WARM_SEQ}-d{i}" for i in range(MIXED_DECODES)]
    prompts = [f"{WARM_SEQ}-p{i}" for i in range(MIXED_PROMPTS)]
    lengths = [MIXED_PROMPT_LEN + i for i in range(MIXED_DECODES)]
    try:
        _run(stage, [SeqChunk(s, 0, n) for s, n in zip(decodes, lengths)], release=False)
        _run(stage, [SeqChunk(s, n, 1) for s, n in zip(decodes, lengths)]
             + [SeqChunk(s, 0, MIXED_PROMPT_LEN) for s in prompts], release=False)
    finally:
        for seq in decodes + prompts:
            stage.release(seq)


def _run(stage, chunks: list[SeqChunk], release: bool = True) -> None:
    """One step of zeros (token id 0, or zero hidden states) over these chunks."""
    n = sum(c.num_tokens for c in chunks)
    if stage.is_first:
        inputs = torch.zeros(n, dtype=torch.long)
    else:
        inputs = torch.zeros(n, stage.config.hidden_size, dtype=DTYPES[stage.dtype],
                             device=stage.device)
    try:
        stage.forward(StepBatch(tuple(chunks)), inputs)
    finally:
        if release:
            for c in chunks:
                stage.release(c.seq_id)
