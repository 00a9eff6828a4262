"""The master's side of the wire: the StepRequest of a micro-batch. The conversions both ends
share (tensors, sampling params) live in proto/convert.py, so both read and write the same bytes."""
from __future__ import annotations

import dataclasses

import grpc

from master.scheduler import MicroBatch
from proto import pipeline_pb2 as pb
from proto.convert import params_to_proto

STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def empty_hidden(hidden_size: int, dtype: str) -> pb.Tensor:
    """The [0, H] tensor of a step that only releases sequences."""
    return pb.Tensor(data=b"", dtype=dtype, shape=[0, hidden_size])


def step_request(batch: MicroBatch, hidden: pb.Tensor) -> pb.StepRequest:
    """The StepRequest of a micro-batch whose head output is `hidden` [T, H]."""
    seqs = []
    for seq, chunk, sample, first in zip(
        batch.seqs, batch.chunks, batch.samples, batch.first_appearance
    ):
        step = pb.SeqStep(seq_id=seq.seq_id, start_pos=chunk.start_pos,
                          num_tokens=chunk.num_tokens, sample=sample)
        if first:
            params = seq.params
            if params.repetition_penalty != 1.0:  # the only knob that reads the prompt
                params = dataclasses.replace(params, prompt_token_ids=tuple(seq.prompt_token_ids))
            step.params.CopyFrom(params_to_proto(params))
        seqs.append(step)
    release = [s.seq_id for s in batch.release if s.params_sent]
    return pb.StepRequest(step_id=batch.step_id, seqs=seqs, hidden=hidden, release=release)
