"""The calls the worker makes to its tail model inside Triton, and how the model answers.

Every call is one inference with four UINT8 inputs -- OP (what to do, as text), STREAM (the
pipeline stream it is for), STEP (a serialized StepRequest whose hidden tensor carries dtype
and shape but no bytes) and the optional HIDDEN (the hidden states' raw bytes, so that they
are not serialized into STEP a second time) -- and one UINT8 output, RESULT (a serialized
StepReply, or a HandshakeReply for "info"). No BYTES tensors: they cost a length prefix and
a Python loop in the stub each way, and on the H200 host the Python backend handed its stub
fill bytes for every BYTES input (bench/gpu/pipeline.md).
"""
from __future__ import annotations

from enum import Enum

from proto import pipeline_pb2 as pb

INPUT_OP, INPUT_STREAM, INPUT_STEP, INPUT_HIDDEN = "OP", "STREAM", "STEP", "HIDDEN"
OUTPUT_RESULT = "RESULT"


class Op(str, Enum):
    """What a call asks of the tail model; the value is the OP input's text."""

    INFO = "info"  # -> HandshakeReply
    STEP = "step"  # STEP: a StepRequest -> StepReply
    DROP_STREAM = "drop_stream"  # release every sequence of STREAM -> StepReply (KV counters)
    EXPIRE_IDLE = "expire_idle"  # release sequences idle too long -> StepReply (KV counters)


def parse_op(text: str) -> Op:
    try:
        return Op(text)
    except ValueError:
        raise ValueError(f"unknown op {text!r}; expected one of "
                         f"{', '.join(op.value for op in Op)}") from None


def handle(tail, op: Op, stream: str, payload: bytes, hidden=None) -> bytes:
    """Run one call on a TailRunner (inside the Triton model); returns RESULT's bytes.
    hidden: the HIDDEN input (a uint8 buffer), None when the bytes are inside STEP."""
    if op is Op.STEP:
        request = pb.StepRequest.FromString(payload)
        return tail.step(stream, request, hidden_data=hidden).SerializeToString()
    if op is Op.DROP_STREAM:
        tail.drop_stream(stream)
    elif op is Op.EXPIRE_IDLE:
        tail.expire_idle()
    elif op is Op.INFO:
        return tail.info().SerializeToString()
    return tail.status().SerializeToString()
