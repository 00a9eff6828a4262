"""The calls the worker makes to its tail model inside Triton, and how the model answers.

Every call is one inference with three BYTES inputs -- OP (what to do), STREAM (the pipeline
stream it is for) and STEP (a serialized StepRequest whose hidden tensor carries dtype and
shape but no bytes) -- the optional UINT8 input HIDDEN (the hidden states' raw bytes, passed
as a tensor so that they are not serialized into STEP a second time), and one BYTES output,
RESULT (a serialized StepReply, or a HandshakeReply for "info").
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
