"""Master-side conversions to the pipeline's protobuf messages (proto/pipeline.proto)."""
from __future__ import annotations

import grpc
import torch

from engine.sampling_params import SamplingParams
from master.scheduler import MicroBatch
from proto import pipeline_pb2 as pb

WIRE_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}


def tensor_to_proto(hidden: torch.Tensor) -> pb.Tensor:
    """hidden [T, H] -> raw little-endian bytes; the one copy is `.numpy().tobytes()`."""
    dtype = WIRE_DTYPES[hidden.dtype]
    raw = hidden.detach().contiguous()
    if raw.dtype is torch.bfloat16:
        raw = raw.view(torch.int16)  # numpy has no bf16: same bits under another name
    return pb.Tensor(data=raw.cpu().numpy().tobytes(), dtype=dtype, shape=list(hidden.shape))


def empty_hidden(hidden_size: int, dtype: str) -> pb.Tensor:
    """The [0, H] tensor of a step that only releases sequences."""
    return pb.Tensor(data=b"", dtype=dtype, shape=[0, hidden_size])


def params_to_proto(params: SamplingParams, prompt_token_ids: list[int]) -> pb.SamplingParams:
    msg = pb.SamplingParams(
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        min_p=params.min_p,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        repetition_penalty=params.repetition_penalty,
        logprobs=-1 if params.logprobs is None else params.logprobs,
        stop_token_ids=list(params.stop_token_ids),
    )
    if params.seed is not None:
        msg.seed = params.seed
    if params.repetition_penalty != 1.0:  # the only knob that looks at the prompt
        msg.prompt_token_ids.extend(prompt_token_ids)
    return msg


def step_request(batch: MicroBatch, hidden: pb.Tensor) -> pb.StepRequest:
    """The StepRequest of a micro-batch whose head output is `hidden` [T, H]."""
    seqs = []
    for seq, chunk, sample, first in zip(
        batch.seqs, batch.chunks, batch.samples, batch.first_appearance
    ):
        step = pb.SeqStep(seq_id=seq.seq_id, start_pos=chunk.start_pos,
                          num_tokens=chunk.num_tokens, sample=sample)
        if first:
            step.params.CopyFrom(params_to_proto(seq.params, seq.prompt_token_ids))
        seqs.append(step)
    release = [s.seq_id for s in batch.release if s.params_sent]
    return pb.StepRequest(step_id=batch.step_id, seqs=seqs, hidden=hidden, release=release)
