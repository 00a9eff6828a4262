"""The scheduler's choices, without I/O: budget, chunking, admission, splitting, releases."""
import pytest

from engine.sampler import SampleResult
from engine.sampling_params import SamplingParams
from master.generation import GenerationRequest, QueueFull, SequenceFailed
from master.scheduler import Scheduler, SchedulerConfig
from master.sequence import Sequence, SequenceStatus


def make_seq(name: str, prompt_len: int, max_tokens: int = 8) -> Sequence:
    request = GenerationRequest(name, list(range(1, prompt_len + 1)), SamplingParams(), max_tokens)
    return Sequence(request)


def make_scheduler(capacity: int = 10_000, **kw) -> Scheduler:
    s = Scheduler(SchedulerConfig(**kw))
    s.set_limits(capacity)
    return s


def answer(s: Scheduler, batch, token: int = 7) -> None:
    """A worker reply: every sequence that samples gets `token`."""
    s.postprocess(batch, {i.seq.seq_id: SampleResult(token, None) for i in batch.seqs if i.samples})


def test_long_prompt_is_chunked_and_only_the_last_chunk_samples():
    s = make_scheduler(step_token_budget=256)
    seq = make_seq("a", 1000)
    s.add(seq)
    sizes, samples, starts = [], [], []
    while seq.is_prefilling:
        batch = s.schedule()
        (chunk,) = batch.chunks
        sizes.append(chunk.num_tokens)
        starts.append(chunk.start_pos)
        samples.append(batch.seqs[0].samples)
        assert batch.token_ids == seq.token_ids[chunk.start_pos:chunk.end_pos]
        answer(s, batch)
    assert sizes == [256, 256, 256, 232]
    assert starts == [0, 256, 512, 768]
    assert samples == [False, False, False, True]
    batch = s.schedule()  # the decode feeds the sampled token at position 1000
    assert (batch.chunks[0].start_pos, batch.chunks[0].num_tokens) == (1000, 1)
    assert batch.token_ids == [7] and [i.samples for i in batch.seqs] == [True]


def test_a_message_size_limit_lowers_the_step_budget():
    s = make_scheduler(step_token_budget=512)
    s.set_limits(10_000, max_step_tokens=100)
    seq = make_seq("a", 250)
    s.add(seq)
    sizes = []
    while seq.is_prefilling:
        batch = s.schedule()
        sizes.append(batch.num_tokens)
        answer(s, batch)
    assert sizes == [100, 100, 50]


def test_budget_caps_a_step_and_decodes_go_before_prefills():
    s = make_scheduler(step_token_budget=64, max_inflight_batches=1)
    old = make_seq("old", 10)
    s.add(old)
    answer(s, s.schedule())  # old is now decoding
    s.add(make_seq("new", 100))
    batch = s.schedule()
    assert [c.seq_id for c in batch.chunks] == ["old", "new"]
    assert [c.num_tokens for c in batch.chunks] == [1, 63]
    assert batch.num_tokens == 64
    assert [i.sends_params for i in batch.seqs] == [False, True]


def test_a_sequence_is_in_at_most_one_inflight_batch_and_batches_split_evenly():
    s = make_scheduler(max_inflight_batches=2)
    seqs = [make_seq(f"s{i}", 4) for i in range(6)]
    for seq in seqs:
        s.add(seq)
    a, b = s.schedule(), s.schedule()
    ids_a, ids_b = {c.seq_id for c in a.chunks}, {c.seq_id for c in b.chunks}
    assert len(ids_a) == len(ids_b) == 3 and not ids_a & ids_b
    assert s.schedule() is None  # everyone is in flight
    answer(s, a)
    c = s.schedule()
    assert {ch.seq_id for ch in c.chunks} == ids_a  # A's half comes back as one group
    assert [ch.num_tokens for ch in c.chunks] == [1, 1, 1]


def test_admission_waits_for_kv_capacity_and_resumes_when_freed():
    s = make_scheduler(capacity=64, kv_block_size=16, max_inflight_batches=1,
                       enable_prefix_caching=False)  # equal prompts: the second would share
    first, second = make_seq("first", 30, max_tokens=10), make_seq("second", 30, max_tokens=10)
    s.add(first)
    s.add(second)
    batch = s.schedule()  # each needs 48 slots after rounding to blocks: only one fits
    assert [c.seq_id for c in batch.chunks] == ["first"]
    assert second.status is SequenceStatus.WAITING
    answer(s, batch)
    s.finish(first, "stop")
    batch = s.schedule()
    assert [r.seq_id for r in batch.release] == ["first"]
    assert [c.seq_id for c in batch.chunks] == ["second"]
    assert s.kv.reserved_tokens == 48


def test_queue_bound_raises_queue_full_and_oversized_request_fails():
    s = make_scheduler(capacity=64, max_num_seqs=1, max_waiting=2)
    s.add(make_seq("a", 4))  # will take the free slot: does not count as waiting
    s.add(make_seq("b", 4))
    s.add(make_seq("c", 4))
    with pytest.raises(QueueFull) as e:
        s.add(make_seq("d", 4))
    assert e.value.retry_after_s > 0
    with pytest.raises(SequenceFailed) as e:
        make_scheduler(capacity=64).add(make_seq("huge", 100))
    assert e.value.code == "RESOURCE_EXHAUSTED"


def test_cancelled_sequence_is_released_with_the_next_batch_even_alone():
    s = make_scheduler()
    seq = make_seq("a", 4)
    s.add(seq)
    answer(s, s.schedule())
    s.finish(seq, "cancelled")
    batch = s.schedule()  # nothing else to run: a release-only step
    assert batch.seqs == [] and [r.seq_id for r in batch.release] == ["a"]
    assert s.kv.reserved_tokens == 0 and s.schedule() is None


def test_cancelling_a_waiting_sequence_releases_nothing():
    s = make_scheduler(max_num_seqs=1)
    running, queued = make_seq("run", 4), make_seq("queued", 4)
    s.add(running)
    s.add(queued)
    s.schedule()
    s.finish(queued, "cancelled")
    assert not s.waiting and not s.has_releases()
    assert queued.is_finished


def test_step_ids_strictly_increase_and_config_is_validated():
    s = make_scheduler()
    for name in "abc":
        s.add(make_seq(name, 2))
    ids = [s.schedule().step_id for _ in range(2)]
    assert ids == sorted(set(ids))
    with pytest.raises(ValueError, match="step_token_budget"):
        SchedulerConfig(step_token_budget=0)


def test_sampled_tokens_wait_for_delivery_and_reach_the_reader_before_a_later_error():
    s = make_scheduler()
    seq = make_seq("a", 4)
    s.add(seq)
    answer(s, s.schedule(), token=7)
    assert seq.outbox.empty()  # held: the driver delivers once the next step is sent
    answer(s, s.schedule(), token=8)
    s.fail_all(SequenceFailed("UNAVAILABLE", "worker gone"))
    got = [seq.outbox.get_nowait() for _ in range(seq.outbox.qsize())]
    assert [e.token_id for e in got[:2]] == [7, 8] and isinstance(got[2], SequenceFailed)
    s2 = make_scheduler()
    other = make_seq("b", 4)
    s2.add(other)
    answer(s2, s2.schedule(), token=9)
    s2.deliver()
    assert other.outbox.get_nowait().token_id == 9
