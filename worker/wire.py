"""The worker's side of the wire: check an arriving hidden tensor, write a sampled token.
The conversions both ends share (tensors, sampling params) live in proto/convert.py."""
from __future__ import annotations

from engine.dtypes import DTYPES
from engine.sampler import SampleResult
from proto import pipeline_pb2 as pb
from proto.convert import WireError


def check_hidden(msg: pb.Tensor, dtype: str, rows: int, hidden_size: int,
                 nbytes: int | None = None) -> None:
    """Raise WireError unless msg is a [rows, hidden_size] tensor of `dtype` with whole bytes
    (nbytes: of the data when it travelled beside the message)."""
    if msg.dtype != dtype:
        raise WireError(f"hidden dtype is {msg.dtype!r}, this worker runs {dtype!r}")
    if list(msg.shape) != [rows, hidden_size]:
        raise WireError(
            f"hidden shape is {list(msg.shape)}, expected [{rows}, {hidden_size}] "
            f"(sum of the sequences' num_tokens, hidden_size)"
        )
    expected = rows * hidden_size * DTYPES[dtype].itemsize
    nbytes = len(msg.data) if nbytes is None else nbytes
    if nbytes != expected:
        raise WireError(f"hidden data is {nbytes} bytes, shape {list(msg.shape)} "
                        f"of {dtype} needs {expected}")


def write_sampled(msg: pb.Sampled, result: SampleResult) -> None:
    """Fill a result's (empty) Sampled in place with one sampled token (logprob 0.0 when
    none was asked for): in place, because building a Sampled and copying it in costs twice
    as much, 64 times a step."""
    msg.SetInParent()  # the outcome is `sampled` even for token 0 without logprobs
    msg.token_id = result.token_id
    if result.stopped:
        msg.stopped = True
    if result.logprob:
        msg.logprob = result.logprob
    for t, lp in result.top_logprobs:
        msg.top_logprobs.add(token_id=t, logprob=lp)
