"""The Pipeline gRPC service: handshake, one Step stream per API, health, TLS.

Error policy for a step (each choice keeps other streams, and where possible the same
stream, running):
- a message that does not parse as a StepRequest: the stream ends with INVALID_ARGUMENT
  (nothing in it can be attributed; every sequence of the stream is released; grpc.aio
  parses each message as the handler iterates, so the DecodeError arrives in `Step`);
- a message larger than max_message_bytes: gRPC ends the stream with RESOURCE_EXHAUSTED;
- a step id not above the previous one: every sequence of that step fails INVALID_ARGUMENT;
- a bad hidden tensor, unknown sequence, position gap, KV exhaustion...: the TailRunner
  fails just the sequences concerned (see worker/tail.py), the stream goes on.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from engine.fingerprint import describe_mismatch
from proto import pipeline_pb2 as pb
from proto import pipeline_pb2_grpc as pb_grpc
from proto.convert import handshake_identity
from worker.client_names import ClientNames
from worker.executor import Executor, ExecutorUnavailable
from worker.orphans import stream_name

log = logging.getLogger(__name__)
REFUSE_WAIT_S = 1.0  # how long a refused stream waits for its first request
SERVICE = pb.DESCRIPTOR.services_by_name["Pipeline"].full_name  # for the health service


class PipelineService(pb_grpc.PipelineServicer):
    """Serves Handshake and Step for every API stream over one executor."""

    def __init__(self, executor: Executor, max_message_bytes: int,
                 client_names: tuple[str, ...] = ()):
        self.executor = executor
        self.names = ClientNames(client_names)  # empty: any client the TLS layer let in
        self.max_message_bytes = max_message_bytes
        self.info: pb.HandshakeReply | None = None  # set once the executor is loaded
        self.stream_ids = itertools.count(1)
        self.open_streams: set[str] = set()
        self._releasing: set[asyncio.Task] = set()
        self.drain_notice: pb.Drain | None = None  # set once: every stream is told, once
        self._draining = asyncio.Event()

    def drain(self, notice: pb.Drain) -> None:
        """SIGTERM: tell every open stream to pause (a StepReply with only `drain`), answer
        the steps already sent, refuse new streams; the APIs close theirs when done."""
        self.drain_notice = notice
        self._draining.set()

    def _refusal(self, context) -> tuple[grpc.StatusCode, str] | None:
        """Why this call is refused as it starts: a client name not allowed, the executor
        still loading, or the worker draining."""
        if refused := self.names.refusal(context):
            return refused
        if self.info is None:
            return grpc.StatusCode.UNAVAILABLE, "the worker is still loading"
        if self.drain_notice is not None:
            return (grpc.StatusCode.UNAVAILABLE,
                    f"the worker is draining: {self.drain_notice.reason}")
        return None

    async def Handshake(self, request, context) -> pb.HandshakeReply:
        if refused := self._refusal(context):
            await context.abort(*refused)
        theirs = handshake_identity(request)
        mismatch = describe_mismatch(handshake_identity(self.info),
                                     {k: v for k, v in theirs.items() if v})
        if mismatch:  # the API refuses; say so here too, for whoever reads this log
            log.warning("handshake from %s (%s) does not match this worker: %s",
                        request.client_name or "?", context.peer(), mismatch)
        else:
            log.info("handshake from %s (%s)", request.client_name or "?", context.peer())
        return self.info

    async def Step(self, requests, context):
        if refused := self._refusal(context):
            await _refuse_stream(requests, context, *refused)
        stream = stream_name(next(self.stream_ids), self.names.identity(context))
        self.open_streams.add(stream)
        log.info("stream %s opened by %s", stream, context.peer())
        last_step_id = -1
        try:
            async for request in _until_drained(_parsed(requests, context), self._draining):
                if request is None:
                    log.info("stream %s: asking its API to pause (draining)", stream)
                    yield pb.StepReply(drain=self.drain_notice)
                    continue
                if request.step_id <= last_step_id:
                    yield await self._reject(stream, request, f"step id {request.step_id} "
                                             f"is not above the previous {last_step_id}")
                    continue
                last_step_id = request.step_id
                yield await self._step(stream, request)
        finally:
            release = self._release(stream)
            if release is not None:
                await asyncio.shield(release)

    async def _step(self, stream: str, request: pb.StepRequest) -> pb.StepReply:
        try:
            return await self.executor.step(stream, request)
        except ExecutorUnavailable as e:
            return _failed_reply(request, grpc.StatusCode.UNAVAILABLE, str(e))
        except Exception as e:  # a bug: fail this step's sequences, keep the stream
            log.exception("stream %s: step %d failed", stream, request.step_id)
            return _failed_reply(request, grpc.StatusCode.INTERNAL, f"worker error: {e!r}")

    async def _reject(self, stream: str, request: pb.StepRequest, why: str) -> pb.StepReply:
        """Fail every sequence of a step that cannot run; release them on the tail."""
        release = [s.seq_id for s in request.seqs] + list(request.release)
        try:
            await self.executor.step(stream, pb.StepRequest(step_id=request.step_id,
                                                            release=release))
        except ExecutorUnavailable:
            pass  # the tail is gone and its sequences with it
        except Exception:
            log.exception("stream %s: releasing the sequences of a rejected step", stream)
        return _failed_reply(request, grpc.StatusCode.INVALID_ARGUMENT, why)

    def _release(self, stream: str) -> asyncio.Task | None:
        """Start releasing an open stream's sequences, once; close() waits for it."""
        if stream not in self.open_streams:
            return None
        self.open_streams.discard(stream)
        task = asyncio.ensure_future(self._drop(stream))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        return task

    async def close(self) -> None:
        """Release every stream still open, before the executor goes away.

        A stopped server cancels its Step handlers, but their cleanup may run only after
        the caller has moved on to closing the executor.
        """
        for stream in list(self.open_streams):
            self._release(stream)
        await asyncio.gather(*self._releasing)

    async def _drop(self, stream: str) -> None:
        try:
            await self.executor.drop_stream(stream)
            log.info("stream %s closed; its sequences are released", stream)
        except Exception as e:  # never let cleanup take the server down
            log.warning("stream %s: releasing its sequences failed: %s", stream, e)


class _BadHandshakeBytes(grpc.aio.ServerInterceptor):
    """Handshake bytes that do not parse: INVALID_ARGUMENT, like a Step stream's (grpc.aio
    parses a unary request before the servicer runs, and would answer UNKNOWN)."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if details.method != f"/{SERVICE}/Handshake" or handler is None:
            return handler
        parse, behavior = handler.request_deserializer, handler.unary_unary

        async def handshake(data: bytes, context):
            try:
                request = parse(data)
            except DecodeError as e:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                    f"not a HandshakeRequest: {e}")
            return await behavior(request, context)

        return handler._replace(request_deserializer=None, unary_unary=handshake)


async def _refuse_stream(requests, context, code: grpc.StatusCode, details: str) -> None:
    """End a Step stream with `code` once its first request has arrived (or after
    REFUSE_WAIT_S): aborted sooner, the status can overtake the client's first write, which
    then fails INTERNAL "Internal error from Core" and the API never learns why."""
    with contextlib.suppress(Exception):  # a bad message, an early close, a silent client
        await asyncio.wait_for(anext(aiter(requests)), REFUSE_WAIT_S)
    await context.abort(code, details)


async def _parsed(requests, context):
    """The stream's StepRequests; bytes that do not parse end the stream INVALID_ARGUMENT."""
    try:
        async for request in requests:
            yield request
    except DecodeError as e:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"step message is not a StepRequest: {e}")


async def _until_drained(requests, draining: asyncio.Event):
    """The stream's requests, with one None in between when the worker starts draining (at
    once if it already is). A request being read is never cancelled: it is awaited next."""
    pending = requests.__aiter__()
    drain_wait = asyncio.ensure_future(draining.wait())
    read, told = None, False
    try:
        while True:
            read = asyncio.ensure_future(pending.__anext__())
            if not told:  # the drain may have begun while the caller ran a step
                if not drain_wait.done():
                    await asyncio.wait({read, drain_wait}, return_when=asyncio.FIRST_COMPLETED)
                if drain_wait.done():
                    told = True
                    yield None
            try:
                yield await read
            except StopAsyncIteration:
                return
    finally:  # the stream ended or was cancelled
        drain_wait.cancel()
        if read is not None:
            read.cancel()


def _failed_reply(request: pb.StepRequest, code: grpc.StatusCode, why: str) -> pb.StepReply:
    error = pb.SeqError(code=code.value[0], message=why)
    return pb.StepReply(step_id=request.step_id,
                        results=[pb.SeqResult(seq_id=s.seq_id, error=error) for s in request.seqs])


def make_server(service: PipelineService, listen: str, *, credentials=None) -> tuple[
        grpc.aio.Server, health.HealthServicer, int]:
    """A grpc.aio server with the Pipeline and health services bound to `listen`;
    returns (server, health servicer, bound port)."""
    limit = service.max_message_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 0),
    ], interceptors=[_BadHandshakeBytes()])
    pb_grpc.add_PipelineServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {listen} (address in use or not local?)")
    return server, health_servicer, port


async def set_serving(health_servicer, serving: bool) -> None:
    status = (health_pb2.HealthCheckResponse.SERVING if serving
              else health_pb2.HealthCheckResponse.NOT_SERVING)
    for name in ("", SERVICE):
        await health_servicer.set(name, status)
