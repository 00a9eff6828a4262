"""What the pipeline runs in the head's one thread, in order (master/pipeline_driver.py): a
step's block bookkeeping and launch, the reset after a lost worker, and the KV numbers the
event loop reports, read there too (read from the loop they raced the head thread's block
table, "dictionary changed size during iteration": found by the soak, bench/load)."""
from __future__ import annotations

from master.step import Step


def launch_step(head, step: Step):
    """Keep, free and evict blocks in the worker's order, then run embedding + layers [0, k);
    returns master.head.PendingHidden."""
    head.keep_blocks(step.cache_blocks)
    head.release([s.seq_id for s in step.release])
    head.evict(step.evict)
    head.attach_prefixes((s.seq.seq_id, s.seq.cached_prefix) for s in step.seqs
                         if s.sends_params and s.seq.cached_prefix)
    return head.launch(step.chunks, step.token_ids)


def reset(head, seq_ids: list[str]) -> None:
    """The worker was lost: free these sequences and every kept block."""
    head.release(seq_ids)
    head.drop_cached()


def kv_numbers(head) -> dict[str, float]:
    return {"usage": head.kv_usage, "used_tokens": head.kv_used_tokens,
            "cached_tokens": head.kv_cached_tokens}
