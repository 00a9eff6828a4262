"""The master's side of the wire: a Step as a StepRequest, a StepReply as per-sequence
outcomes. The conversions both ends share (tensors, sampling params) live in proto/convert.py,
so both read and write the same bytes."""
from __future__ import annotations

import dataclasses

import grpc

from engine.sampler import SampleResult
from master.generation import SequenceFailed
from master.step import Adopted, Outcome, ScheduledSeq, Step
from proto import pipeline_pb2 as pb
from proto.convert import params_to_proto

STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def empty_hidden(hidden_size: int, dtype: str) -> pb.Tensor:
    """The [0, H] tensor of a step that only releases sequences."""
    return pb.Tensor(data=b"", dtype=dtype, shape=[0, hidden_size])


def step_request(step: Step, hidden: pb.Tensor) -> pb.StepRequest:
    """The StepRequest of a step whose head output is `hidden` [T, H]; the rows of head-only
    chunks (first) stay here, adoptions go last (they have no rows)."""
    keep = [pb.CacheBlock(seq_id=seq_id, block_index=index, hash=h)
            for seq_id, index, h in step.cache_blocks]
    request = pb.StepRequest(step_id=step.step_id,
                             hidden=_without_leading_rows(hidden, step.head_rows),
                             release=step.worker_release, cache_blocks=keep, evict=step.evict)
    add = request.seqs.add  # in place: a list of SeqSteps passed in would be copied
    for s in step.seqs:
        if not s.head_only:
            _seq_step(add(), s)
    for seq in step.adopts:
        add(seq_id=seq.seq_id, adopt=True, resume_key=seq.resume_key)
    return request


def _without_leading_rows(hidden: pb.Tensor, rows: int) -> pb.Tensor:
    """hidden [T, H] -> [T - rows, H] (row-major bytes: a slice)."""
    if not rows:
        return hidden
    row_bytes = len(hidden.data) // hidden.shape[0]
    return pb.Tensor(data=hidden.data[rows * row_bytes:], dtype=hidden.dtype,
                     shape=[hidden.shape[0] - rows, *hidden.shape[1:]])


def _seq_step(msg: pb.SeqStep, item: ScheduledSeq) -> None:
    chunk = item.chunk
    msg.seq_id, msg.start_pos, msg.num_tokens = chunk.seq_id, chunk.start_pos, chunk.num_tokens
    msg.sample = item.samples
    if item.sends_params:
        params = item.seq.params
        if params.repetition_penalty != 1.0:  # the only knob that reads the prompt
            params = dataclasses.replace(params,
                                         prompt_token_ids=tuple(item.seq.prompt_token_ids))
        msg.params.CopyFrom(params_to_proto(params))
        msg.cached_prefix.extend(item.seq.cached_prefix)  # none for a rebuilt sequence
        msg.resume_key = item.seq.resume_key  # kept for adoption if our stream breaks
        # Rebuilt after a lost worker: the worker restores the sampler past these tokens.
        msg.resume_output_ids.extend(item.seq.token_ids[item.seq.num_prompt_tokens:])


def reply_outcomes(reply: pb.StepReply) -> dict[str, Outcome]:
    """seq_id -> the sampled token or the failure the worker reported for it."""
    outcomes: dict[str, Outcome] = {}
    for result in reply.results:
        kind = result.WhichOneof("outcome")
        if kind == "error":
            code = STATUS_NAMES.get(result.error.code, str(result.error.code))
            outcomes[result.seq_id] = SequenceFailed(code, result.error.message)
        elif kind == "adopted":
            outcomes[result.seq_id] = Adopted(list(result.adopted.output_ids),
                                              result.adopted.next_pos)
        elif kind == "sampled":
            s = result.sampled
            tops = s.top_logprobs
            top = tuple((t.token_id, t.logprob) for t in tops) if tops else ()
            outcomes[result.seq_id] = SampleResult(s.token_id, s.logprob, top, s.stopped)
    return outcomes
