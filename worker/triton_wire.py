"""A call to the tail model as Triton's own gRPC messages, built from a pre-built template.

tritonclient's InferInput path wraps every input in a numpy object array, serializes it with a
Python loop and builds the ModelInferRequest field by field: ~80 µs a call on the CPU host
against ~5 µs here (bench/worker/triton_relay.md). The request is the template (model name,
the four inputs' names, types and shapes, the requested output) with the call's raw input
contents appended; the reply's RESULT bytes are read straight out of raw_output_contents.

Triton's raw BYTES tensor layout: each element is a 4-byte little-endian length, then its bytes.
"""
from __future__ import annotations

import struct

from tritonclient.grpc import service_pb2

from worker.triton_protocol import INPUT_HIDDEN, INPUT_OP, INPUT_STEP, INPUT_STREAM, OUTPUT_RESULT

_LENGTH = struct.Struct("<I")


class MalformedReply(RuntimeError):
    """Triton answered without one RESULT element (not the tail model's answer)."""


def one_bytes_element(value: bytes) -> bytes:
    """A BYTES tensor of shape [1] holding `value`, as raw input contents."""
    return _LENGTH.pack(len(value)) + value


class CallTemplate:
    """Builds ModelInferRequests for the tail model named `model`."""

    def __init__(self, model: str):
        base = service_pb2.ModelInferRequest(model_name=model)
        for name in (INPUT_OP, INPUT_STREAM, INPUT_STEP):
            base.inputs.add(name=name, datatype="BYTES", shape=[1])
        base.outputs.add(name=OUTPUT_RESULT)
        self._without_hidden = base
        self._with_hidden = service_pb2.ModelInferRequest()
        self._with_hidden.CopyFrom(base)
        self._with_hidden.inputs.add(name=INPUT_HIDDEN, datatype="UINT8", shape=[0])

    def request(self, op: str, stream: str, payload: bytes,
                hidden: bytes = b"") -> service_pb2.ModelInferRequest:
        """op and stream as text, payload (STEP) and hidden (HIDDEN, omitted when empty) as
        bytes."""
        out = service_pb2.ModelInferRequest()
        out.CopyFrom(self._with_hidden if hidden else self._without_hidden)
        contents = [one_bytes_element(op.encode()), one_bytes_element(stream.encode()),
                    one_bytes_element(payload)]
        if hidden:
            out.inputs[3].shape[0] = len(hidden)
            contents.append(hidden)
        out.raw_input_contents.extend(contents)
        return out


def result_bytes(response: service_pb2.ModelInferResponse) -> bytes:
    """The one element of the RESULT output."""
    if len(response.raw_output_contents) != 1:
        raise MalformedReply(f"Triton answered {len(response.raw_output_contents)} raw "
                             "outputs; the tail model answers exactly one (RESULT)")
    raw = response.raw_output_contents[0]
    if len(raw) < 4 or _LENGTH.unpack_from(raw)[0] != len(raw) - 4:
        raise MalformedReply(f"RESULT is not one BYTES element ({len(raw)} bytes)")
    return raw[4:]
