"""One ModelStreamInfer stream from the worker to its tail model in Triton.

Every call goes over one open bidirectional stream instead of a unary inference each: on the
CPU host a batch-1 decode step's Triton hop took 0.78 ms this way against 1.18 ms unary
(bench/worker/triton_transfer.json; at batch 64 the two are even). The stream carries
Triton's own messages (worker/triton_wire.py), written straight onto the call.

One call at a time: the caller writes its request and reads the answer itself, so that no
task hand-off sits between Triton's answer and the step waiting on it (a reader task and a
queue cost ~0.1 ms a call more on the CPU host, bench/worker/triton_relay.md). Triton runs the
tail model as one instance, one call after another, so calls in flight together would only
queue there instead. A call abandoned half way (its step cancelled) breaks the stream, since
its answer would otherwise be read by the next call; the next call opens a new stream.
"""
from __future__ import annotations

import asyncio

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc


class StreamBroken(Exception):
    """The stream ended or failed (Triton died, restarted, or is shutting down)."""


class TritonStream:
    """Calls over one ModelStreamInfer stream, one at a time."""

    def __init__(self, channel: grpc.aio.Channel):
        self._call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer()
        self._one_at_a_time = asyncio.Lock()
        self.broken: str | None = None  # why, once the stream is unusable

    async def call(self, request: service_pb2.ModelInferRequest
                   ) -> service_pb2.ModelStreamInferResponse:
        """One inference; the response's error_message is the model's error, if any.
        StreamBroken when the stream is gone."""
        async with self._one_at_a_time:
            if self.broken is not None:
                raise StreamBroken(self.broken)
            try:
                await self._call.write(request)
                response = await self._call.read()
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as e:
                raise StreamBroken(self._break(f"stream to Triton failed: {_why(e)}")) from None
            except BaseException:  # cancelled half way: its answer must not reach the next call
                self._break("a call was abandoned half way")
                raise
            if response is grpc.aio.EOF:
                raise StreamBroken(self._break("Triton closed the stream"))
            return response

    def _break(self, why: str) -> str:
        self.broken = self.broken or why
        self._call.cancel()
        return self.broken

    async def close(self) -> None:
        self._break("stream closed by the worker")


def _why(e: Exception) -> str:
    if isinstance(e, grpc.aio.AioRpcError):
        return f"{e.code().name}: {e.details()}"
    return type(e).__name__
