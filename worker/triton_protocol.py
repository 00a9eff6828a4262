"""The calls the worker makes to its tail model inside Triton, and how the model answers.

Every call is one inference with three BYTES inputs -- OP (what to do), STREAM (the pipeline
stream it is for) and STEP (a serialized StepRequest, hidden tensor included: the protobuf is
the format on both hops) -- and one BYTES output, RESULT (a serialized StepReply, or a
HandshakeReply for "info").
"""
from __future__ import annotations

from proto import pipeline_pb2 as pb

INPUT_OP, INPUT_STREAM, INPUT_STEP = "OP", "STREAM", "STEP"
OUTPUT_RESULT = "RESULT"
OPS = ("info", "step", "drop_stream", "expire_idle")


def handle(tail, op: str, stream: str, payload: bytes) -> bytes:
    """Run one call on a TailRunner (inside the Triton model); returns RESULT's bytes."""
    if op == "step":
        return tail.step(stream, pb.StepRequest.FromString(payload)).SerializeToString()
    if op == "drop_stream":
        tail.drop_stream(stream)
        return tail.status().SerializeToString()
    if op == "expire_idle":
        tail.expire_idle()
        return tail.status().SerializeToString()
    if op == "info":
        return tail.info().SerializeToString()
    raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
