"""A step mixing prefills and decodes of different lengths gives each sequence what it gets alone."""
from __future__ import annotations

import pytest
import torch

from engine.errors import KVCacheFull

ATOL = 1e-5

# Per sequence: its tokens, and the (start_pos, num_tokens) of each of its steps.
HISTORIES = {
    "a": [(0, 10), (10, 1), (11, 1), (12, 1)],  # prompt, then decodes
    "b": [None, None, (0, 7), (7, 1)],  # arrives late with a prompt
    "c": [(0, 25), None, (25, 1), (26, 1)],  # long context decoding
    "d": [(0, 5), None, (5, 6), (11, 1)],  # prefill in two chunks
}
NUM_STEPS = 4


def tokens_of(seq_id: str, prompt) -> list[int]:
    return prompt(40, seed=ord(seq_id))


def run_steps(pipe, prompt, seq_ids) -> dict[str, list[torch.Tensor]]:
    """Run the histories of seq_ids together, step by step; logits per sequence per step."""
    out = {s: [] for s in seq_ids}
    for step in range(NUM_STEPS):
        chunks = [(s, *HISTORIES[s][step]) for s in seq_ids if HISTORIES[s][step]]
        if not chunks:
            continue
        ids = [t for s, start, n in chunks for t in tokens_of(s, prompt)[start:start + n]]
        logits = pipe.step(chunks, ids)
        row = 0
        for s, _, n in chunks:
            out[s].append(logits[row:row + n])
            row += n
    return out


def test_mixed_steps_equal_each_sequence_alone(ckpt, pipeline, prompt):
    together = run_steps(pipeline(ckpt, splits=(2,)), prompt, list(HISTORIES))
    for seq_id in HISTORIES:
        alone = run_steps(pipeline(ckpt, splits=(2,)), prompt, [seq_id])[seq_id]
        assert len(alone) == len(together[seq_id])
        for got, want in zip(together[seq_id], alone):
            torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_released_blocks_are_reused_without_leaking_old_context(ckpt, pipeline, prompt):
    pipe = pipeline(ckpt, splits=(1,))
    ids = prompt(30, seed=7)
    want = pipe.greedy("x", ids, 4)
    used = pipe.stages[0].kv.used_tokens
    for stage in pipe.stages:
        stage.release("x")
        assert stage.kv.used_tokens == 0 and stage.kv.num_seqs == 0
    assert pipe.greedy("y", ids, 4) == want  # same blocks, new owner
    assert pipe.stages[0].kv.used_tokens == used


def test_a_step_that_does_not_fit_fails_whole_and_changes_nothing(ckpt, pipeline, prompt):
    # both stages hold 2 layers: 2 blocks of 16 tokens each
    pipe = pipeline(ckpt, splits=(2,), kv_cache_bytes=_bytes_for_tokens(ckpt, 32))
    assert pipe.stages[0].kv.capacity_tokens == 32
    first = pipe.step([("a", 0, 10)], prompt(10))
    used = [s.kv.used_tokens for s in pipe.stages]
    with pytest.raises(KVCacheFull) as info:
        pipe.step([("a", 10, 1), ("b", 0, 20)], prompt(21))
    assert info.value.seq_id == "b" and "'b'" in str(info.value)
    assert [s.kv.used_tokens for s in pipe.stages] == used
    assert pipe.stages[0].kv.seq_len("b") == 0
    # "a" goes on as if the failed step never happened
    again = pipeline(ckpt, splits=(2,))
    again.step([("a", 0, 10)], prompt(10))
    tok = int(first[-1].argmax())
    torch.testing.assert_close(pipe.step([("a", 10, 1)], [tok]), again.step([("a", 10, 1)], [tok]))


def _bytes_for_tokens(ckpt, tokens: int) -> int:
    from engine.stage import Stage

    probe = Stage.load(ckpt, 0, 2, kv_cache_bytes=2**20)
    return probe.kv.bytes_per_token * tokens
