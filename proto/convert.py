"""Both ends' conversions between pipeline.proto messages and engine objects: a Tensor <-> a torch
tensor, SamplingParams <-> engine params. Hand-written; pipeline_pb2*.py beside it are generated."""
from __future__ import annotations

import math

import torch

from engine.dtypes import DTYPE_NAMES, DTYPES
from engine.constraint import Constraint
from engine.sampling_params import SamplingParams
from proto import pipeline_pb2 as pb


INT32_MAX = 2**31 - 1  # top_k, logprobs and token ids travel as int32
UINT64_LIMIT = 2**64  # seed is a uint64
FLOAT32_MAX = 3.4028234663852886e38  # float fields travel as float32: larger becomes inf
_FLOATS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
           "repetition_penalty")


class WireError(ValueError):
    """A message that cannot be used as sent; the text says what is wrong, `field` where."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def check_wire_ranges(params: SamplingParams) -> None:
    """WireError naming the first field pipeline.proto cannot carry as it is (protobuf
    itself raises a bare "Value out of range" that names nothing)."""
    for name in _FLOATS:
        value = getattr(params, name)
        if not (math.isfinite(value) and abs(value) <= FLOAT32_MAX):
            raise WireError(f"{name}: not a finite 32-bit float: {value!r}", name)
    for name in ("top_k", "logprobs"):
        value = getattr(params, name)
        if value is not None and not 0 <= value <= INT32_MAX:
            raise WireError(f"{name}: outside 0..{INT32_MAX}: {value!r}", name)
    if params.seed is not None and not 0 <= params.seed < UINT64_LIMIT:
        raise WireError(f"seed: outside 0..2**64-1: {params.seed!r}", "seed")
    for name in ("stop_token_ids", "prompt_token_ids"):
        ids = getattr(params, name)
        if ids and not (0 <= min(ids) and max(ids) <= INT32_MAX):
            bad = next(t for t in ids if not 0 <= t <= INT32_MAX)
            raise WireError(f"{name}: token id outside 0..{INT32_MAX}: {bad!r}", name)


def tensor_to_proto(tensor: torch.Tensor) -> pb.Tensor:
    """A CPU copy of `tensor` as raw little-endian bytes (x86 and ARM are little-endian)."""
    tensor = tensor.detach().contiguous().cpu()
    data = tensor.view(torch.uint8).numpy().tobytes()  # works for bfloat16 too
    return pb.Tensor(data=data, dtype=DTYPE_NAMES[tensor.dtype], shape=list(tensor.shape))


def tensor_from_proto(msg: pb.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """The tensor a checked message holds (a writable copy: torch refuses read-only buffers)."""
    dtype = DTYPES[msg.dtype]
    if not msg.data:
        return torch.empty(list(msg.shape), dtype=dtype, device=device)
    flat = torch.frombuffer(bytearray(msg.data), dtype=torch.uint8)
    return flat.view(dtype).reshape(list(msg.shape)).to(device)


def params_to_proto(params: SamplingParams) -> pb.SamplingParams:
    """The wire form of engine params (what an API sends on a sequence's first step);
    WireError naming the field when one does not fit (see check_wire_ranges)."""
    check_wire_ranges(params)
    msg = pb.SamplingParams(
        temperature=params.temperature, top_p=params.top_p, top_k=params.top_k,
        min_p=params.min_p, presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        repetition_penalty=params.repetition_penalty,
        logprobs=-1 if params.logprobs is None else params.logprobs,
        stop_token_ids=params.stop_token_ids, prompt_token_ids=params.prompt_token_ids,
    )
    if params.seed is not None:
        msg.seed = params.seed
    if params.constraint is not None:
        msg.constraint.kind, msg.constraint.text = params.constraint.kind, params.constraint.text
    return msg


def params_from_proto(msg: pb.SamplingParams) -> SamplingParams:
    """Engine params from the wire. proto3 cannot tell 0 from unset, so top_p = 0 and
    repetition_penalty = 0 (both invalid as values) mean "off"; logprobs < 0 means none."""
    values = {
        "temperature": msg.temperature, "top_p": msg.top_p or 1.0, "min_p": msg.min_p,
        "presence_penalty": msg.presence_penalty, "frequency_penalty": msg.frequency_penalty,
        "repetition_penalty": msg.repetition_penalty or 1.0,
    }
    for name, value in values.items():
        if not math.isfinite(value):
            raise WireError(f"sampling params: {name} is not a finite number: {value}")
    try:
        return SamplingParams(
            **values,
            top_k=msg.top_k,
            seed=msg.seed if msg.HasField("seed") else None,
            logprobs=msg.logprobs if msg.logprobs >= 0 else None,
            stop_token_ids=tuple(msg.stop_token_ids),
            prompt_token_ids=tuple(msg.prompt_token_ids),
            constraint=(Constraint(msg.constraint.kind, msg.constraint.text)
                        if msg.HasField("constraint") else None),
        )
    except ValueError as e:
        raise WireError(f"sampling params: {e}") from None


def handshake_identity(msg: pb.HandshakeRequest | pb.HandshakeReply) -> dict:
    """What both ends must agree on, read the same way from either handshake message (the
    request's head_layer_end and the reply's layer_start are the same split point k)."""
    split = msg.head_layer_end if isinstance(msg, pb.HandshakeRequest) else msg.layer_start
    return dict(fingerprint=msg.fingerprint, split_layer=split, dtype=msg.dtype,
                hidden_size=msg.hidden_size)
