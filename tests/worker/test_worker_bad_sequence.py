"""Any single bad sequence in a step fails alone (its own error) or runs; the other sequences
of the same step get exactly the tokens they get without it, on both executors."""
import math

import grpc
import pytest

from pipeline_driver import StepStream, result_of
from proto import pipeline_pb2 as pb

GOOD = {"a": [151644, 872, 198, 9707], "b": [40, 1079]}
GREEDY = pb.SamplingParams(temperature=0, logprobs=2)
DECODE_STEPS = 3
INT32_MAX = 2**31 - 1

BAD_PARAMS = {
    "negative top_k": pb.SamplingParams(top_k=-5),
    "top_k above the vocabulary": pb.SamplingParams(top_k=INT32_MAX, temperature=1),
    "logprobs 21": pb.SamplingParams(logprobs=21),
    "NaN temperature": pb.SamplingParams(temperature=math.nan),
    "infinite repetition_penalty": pb.SamplingParams(repetition_penalty=math.inf),
    "top_p 2": pb.SamplingParams(top_p=2, temperature=1),
    "min_p -1": pb.SamplingParams(min_p=-1, temperature=1),
    "presence_penalty 1e30": pb.SamplingParams(presence_penalty=1e30, temperature=1),
    "negative prompt id": pb.SamplingParams(prompt_token_ids=[-1], repetition_penalty=1.5),
    "prompt id above the vocabulary": pb.SamplingParams(prompt_token_ids=[INT32_MAX],
                                                        repetition_penalty=1.5),
    "stop ids outside the vocabulary": pb.SamplingParams(stop_token_ids=[-7, INT32_MAX]),
    "largest seed": pb.SamplingParams(seed=2**64 - 1, temperature=1),
}


def bad_step(case: str, head) -> tuple[pb.SeqStep, list]:
    """The bad sequence's SeqStep and its hidden rows (None = the head's for 2 tokens)."""
    step = pb.SeqStep(seq_id="bad", start_pos=0, num_tokens=2, sample=True)
    if case == "no params":
        return step, head.hidden([("bad", 0, [5, 6])])
    if case == "NaN hidden":
        step.params.CopyFrom(GREEDY)
        return step, head.hidden([("bad", 0, [5, 6])]) * math.nan
    step.params.CopyFrom(BAD_PARAMS.get(case, GREEDY))
    rows = head.hidden([("bad", 0, [5, 6])])
    if case == "position gap":
        step.start_pos = 7
    return step, rows


async def run_good(stream: StepStream, head, bad: str | None) -> dict:
    """Prefill and decode the good sequences, with the bad one in the first step."""
    import torch

    out, pos, feed = {s: [] for s in GOOD}, {s: 0 for s in GOOD}, dict(GOOD)
    for step in range(DECODE_STEPS + 1):
        chunks = [(s, pos[s], feed[s]) for s in GOOD]
        seqs = [pb.SeqStep(seq_id=s, start_pos=p, num_tokens=len(t), sample=True)
                for s, p, t in chunks]
        hidden = head.hidden(chunks)
        if step == 0:
            for s in seqs:
                s.params.CopyFrom(GREEDY)
            if bad is not None:  # in the middle of the step: rows before and after it
                bad_seq, bad_rows = bad_step(bad, head)
                seqs.insert(1, bad_seq)
                split = len(GOOD["a"])
                hidden = torch.cat([hidden[:split], bad_rows, hidden[split:]])
                head.release("bad")
        reply = await stream.step(seqs, hidden, release=("bad",) if step == 1 else ())
        for s in GOOD:
            result = result_of(reply, s)
            assert result.WhichOneof("outcome") == "sampled", (bad, s, result)
            out[s].append((result.sampled.token_id, result.sampled.logprob))
            pos[s] += len(feed[s])
            feed[s] = [result.sampled.token_id]
        if step == 0 and bad is not None:
            outcome = result_of(reply, "bad").WhichOneof("outcome")
            assert outcome in ("error", "sampled"), (bad, outcome)
    for s in GOOD:
        head.release(s)
    return out


BAD_CASES = [*BAD_PARAMS, "no params", "NaN hidden", "position gap"]


async def test_one_bad_sequence_leaves_the_others_in_its_step_untouched(worker, head):
    async with grpc.aio.insecure_channel(worker.address) as channel:
        alone = StepStream(channel)
        want = await run_good(alone, head, None)
        alone.cancel()
        for bad in BAD_CASES:
            mixed = StepStream(channel)
            got = await run_good(mixed, head, bad)
            mixed.cancel()
            for s in GOOD:
                assert [t for t, _ in got[s]] == [t for t, _ in want[s]], (bad, s)
                assert [lp for _, lp in got[s]] == pytest.approx(
                    [lp for _, lp in want[s]], abs=1e-4), (bad, s)
    assert worker.proc.poll() is None, worker.log()
