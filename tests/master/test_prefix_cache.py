"""Prefix caching on the master: block hashes, LRU of idle blocks, what the scheduler sends."""
from __future__ import annotations

from engine.sampler import SampleResult
from engine.sampling_params import SamplingParams
from master.generation import GenerationRequest, PipelineUnavailable
from master.prefix_cache import PrefixCache, extend_hashes, hash_block
from master.scheduler import Scheduler, SchedulerConfig
from master.sequence import Sequence

BS = 4


def seq(name: str, prompt: list[int], max_tokens: int = 2) -> Sequence:
    return Sequence(GenerationRequest(name, prompt, SamplingParams(), max_tokens))


def scheduler(capacity: int = 1000, **kw) -> Scheduler:
    s = Scheduler(SchedulerConfig(kv_block_size=BS, max_inflight_batches=1, **kw))
    s.set_limits(capacity)
    return s


def run_to_end(s: Scheduler, *seqs: Sequence):
    """Schedule and answer until every one of `seqs` finished; returns the steps."""
    steps = []
    for q in seqs:
        s.add(q)
    while not all(q.is_finished for q in seqs):
        step = s.schedule()
        steps.append(step)
        s.postprocess(step, {i.seq.seq_id: SampleResult(9, None) for i in step.seqs if i.samples})
    return steps


def test_a_block_hash_covers_its_tokens_and_every_block_before_it():
    a = extend_hashes([], [1, 2, 3, 4, 5, 6, 7, 8], 2, BS)
    b = extend_hashes([], [1, 2, 3, 4, 5, 6, 7, 8], 2, BS)
    c = extend_hashes([], [0, 2, 3, 4, 5, 6, 7, 8], 2, BS)
    assert a == b and a[0] != c[0] and a[1] != c[1]  # same second block, other parent
    assert a[1] == hash_block(a[0], [5, 6, 7, 8]) and 0 <= a[1] < 2**64


def test_idle_blocks_are_evicted_least_recently_released_first():
    cache = PrefixCache(BS)
    for h in (1, 2, 3):
        assert cache.add(h)
    assert not cache.add(2)  # already kept
    cache.release([2])
    cache.release([3, 1])  # a sequence's blocks: its last one becomes idle first
    cache.acquire(cache.match([3, 5]))  # held again: not evictable
    assert cache.match([1, 2, 3]) == [1, 2, 3] and cache.match([2, 3]) == [2, 3]
    assert cache.match([5, 1]) == []
    assert [cache.evict_idle(), cache.evict_idle(), cache.evict_idle()] == [2, 1, None]
    assert cache.num_blocks == 1


def test_a_second_prompt_starts_after_the_kept_blocks_and_computes_at_least_one_token():
    s = scheduler()
    first = seq("first", list(range(1, 13)))  # 12 tokens: 3 full blocks
    steps = run_to_end(s, first)
    kept = [c for st in steps for c in st.cache_blocks]
    assert kept == [("first", i, first.block_hashes[i]) for i in range(3)]  # once answered
    again = seq("again", list(range(1, 13)))
    s.add(again)
    step = s.schedule()
    assert step.release == [first]
    (item,) = step.seqs
    assert again.cached_prefix == first.block_hashes[:2]  # not the last block: one token stays
    assert (item.chunk.start_pos, item.chunk.num_tokens) == (8, 4)
    assert (step.prefix_query_tokens, step.prefix_hit_tokens) == (12, 8)


def test_kept_blocks_count_once_and_are_evicted_to_admit_new_work():
    s = scheduler(capacity=24)  # 6 blocks
    a = seq("a", list(range(1, 13)), max_tokens=4)  # 16 tokens worst case: 4 blocks
    run_to_end(s, a)
    assert s.kv.prefix.num_blocks == 3 and s.kv.reserved_tokens == 0
    b = seq("b", list(range(100, 113)), max_tokens=7)  # 20 tokens: 5 blocks, shares nothing
    s.add(b)
    step = s.schedule()
    assert [i.seq for i in step.seqs] == [b]
    assert len(step.evict) == 2 and s.kv.prefix.num_blocks == 1  # 5 + 1 kept = 6 blocks
    assert step.evict == [a.block_hashes[2], a.block_hashes[1]]  # the prefix's tail first


def test_caching_off_keeps_nothing_and_a_reconnect_forgets_everything():
    off = scheduler(enable_prefix_caching=False)
    a = seq("a", list(range(1, 13)))
    steps = run_to_end(off, a)
    assert off.kv.prefix is None and not any(st.cache_blocks for st in steps)
    s = scheduler()
    run_to_end(s, seq("a", list(range(1, 13))))
    assert s.kv.prefix.num_blocks == 3
    s.fail_all(PipelineUnavailable("worker gone"))
    s.set_limits(1000)  # the next handshake
    b = seq("b", list(range(1, 13)))
    s.add(b)
    step = s.schedule()
    assert b.cached_prefix == [] and step.seqs[0].chunk.start_pos == 0
