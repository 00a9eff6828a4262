"""The master's gRPC link to the worker: channel (TLS when configured), handshake, Step stream.

A connection is one channel + one handshake + one Step stream. When it breaks, the caller
fails what was in flight and calls `connect_with_backoff()` again; `readiness()` says why the
pipeline is not serving meanwhile.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import grpc

from engine.fingerprint import describe_mismatch
from engine.manifest import Manifest, first_difference
from master.generation import PipelineUnavailable
from proto import pipeline_pb2 as pb
from proto import pipeline_pb2_grpc as pb_grpc
from proto.convert import handshake_identity

log = logging.getLogger("duet.master.pipeline")


@dataclass(frozen=True)
class PipelineClientConfig:
    """Where the worker is and how to talk to it."""

    worker_address: str  # host:port
    client_name: str = "master"  # shows in the worker's logs
    max_message_bytes: int = 64 * 2**20  # both directions, set explicitly on the channel
    tls_ca_file: str = ""  # CA that signed the worker's certificate; "" = plaintext
    tls_cert_file: str = ""  # this client's certificate for mTLS
    tls_key_file: str = ""
    connect_timeout_s: float = 5.0  # one handshake attempt
    reconnect_initial_s: float = 0.1  # first backoff; doubles up to reconnect_max_s
    reconnect_max_s: float = 5.0

    def __post_init__(self):
        if ":" not in self.worker_address:
            raise ValueError(f"worker_address: expected host:port, got {self.worker_address!r}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes: too small: {self.max_message_bytes}")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file: set both or neither")
        if (self.tls_cert_file or self.tls_key_file) and not self.tls_ca_file:
            raise ValueError("tls_ca_file: required when a client certificate is set")
        if not 0 < self.reconnect_initial_s <= self.reconnect_max_s:
            raise ValueError("reconnect_initial_s: must be > 0 and <= reconnect_max_s")


@dataclass(frozen=True)
class HeadIdentity:
    """What the worker must agree with: this head's checkpoint, split point and dtype."""

    fingerprint: str
    split_layer: int  # k: the head runs [0, k), the worker must start at k
    dtype: str
    hidden_size: int
    manifest: Manifest | None = None  # the checkpoint's SHA256SUMS, when it has one

    def handshake(self, client_name: str) -> pb.HandshakeRequest:
        return pb.HandshakeRequest(fingerprint=self.fingerprint, head_layer_end=self.split_layer,
                                   dtype=self.dtype, hidden_size=self.hidden_size,
                                   client_name=client_name,
                                   manifest_digest=self.manifest.digest() if self.manifest else "")


def manifest_mismatch(mine: Manifest | None, reply: pb.HandshakeReply) -> str | None:
    """When both hosts have a manifest and the digests differ: the first differing file."""
    if mine is None or not reply.manifest_digest or reply.manifest_digest == mine.digest():
        return None
    theirs = {entry.path: entry.sha256 for entry in reply.manifest}
    first = first_difference(mine.as_dict(), theirs)
    return (f"checkpoint manifest digest: expected {mine.digest()[:16]}…, got "
            f"{reply.manifest_digest[:16]}…; first differing file: {first}")


def _read(path: str) -> bytes | None:
    return Path(path).read_bytes() if path else None


class StepStream:
    """One open Step stream: send requests, receive replies in order."""

    def __init__(self, call, address: str):
        self._call = call
        self._address = address

    async def send(self, request: pb.StepRequest) -> None:
        try:
            await self._call.write(request)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as e:
            raise PipelineUnavailable(await self._why(e)) from None

    async def recv(self) -> pb.StepReply:
        try:
            reply = await self._call.read()
        except grpc.aio.AioRpcError as e:
            raise PipelineUnavailable(await self._why(e)) from None
        if reply is grpc.aio.EOF:
            raise PipelineUnavailable(f"worker at {self._address} closed the step stream")
        return reply

    def cancel(self) -> None:
        self._call.cancel()

    async def _why(self, e: Exception) -> str:
        if isinstance(e, grpc.aio.AioRpcError):
            return f"worker at {self._address}: {e.code().name}: {e.details()}"
        if self._call.done():  # a write after the worker ended the stream: its status says why
            code, details = await self._call.code(), await self._call.details()
            return f"worker at {self._address}: {code.name}: {details}"
        return f"worker at {self._address}: step stream closed ({type(e).__name__})"


class PipelineClient:
    """Channel, handshake and Step stream to the worker, with readiness and backoff."""

    def __init__(self, config: PipelineClientConfig, identity: HeadIdentity):
        self.config = config
        self.identity = identity
        self.handshake: pb.HandshakeReply | None = None  # of the current connection
        self._channel: grpc.aio.Channel | None = None
        self._reason = f"connecting to the worker at {config.worker_address}"

    def readiness(self) -> tuple[bool, str]:
        if self.handshake is not None:
            return True, "ready"
        return False, self._reason

    def max_message_bytes(self) -> int:
        """The largest step message both ends accept (after a handshake)."""
        theirs = self.handshake.max_message_bytes if self.handshake is not None else 0
        return min(self.config.max_message_bytes, theirs or self.config.max_message_bytes)

    def mark_down(self, reason: str) -> None:
        self.handshake = None
        self._reason = reason

    def _new_channel(self) -> grpc.aio.Channel:
        c = self.config
        options = [
            ("grpc.max_send_message_length", c.max_message_bytes),
            ("grpc.max_receive_message_length", c.max_message_bytes),
        ]
        if not c.tls_ca_file:
            return grpc.aio.insecure_channel(c.worker_address, options=options)
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(c.tls_ca_file),
            private_key=_read(c.tls_key_file),
            certificate_chain=_read(c.tls_cert_file),
        )
        return grpc.aio.secure_channel(c.worker_address, creds, options=options)

    async def connect(self) -> StepStream:
        """One attempt: fresh channel, handshake, compare, open the Step stream."""
        await self.close()
        self._channel = self._new_channel()
        stub = pb_grpc.PipelineStub(self._channel)
        request = self.identity.handshake(self.config.client_name)
        address = self.config.worker_address
        try:
            reply = await stub.Handshake(request, timeout=self.config.connect_timeout_s)
        except grpc.aio.AioRpcError as e:
            raise PipelineUnavailable(
                f"worker at {address} unreachable: {e.code().name}: {e.details()}"
            ) from None
        mismatch = (describe_mismatch(handshake_identity(request), handshake_identity(reply))
                    or manifest_mismatch(self.identity.manifest, reply))
        if mismatch:
            raise PipelineUnavailable(f"worker at {address} refused by handshake: {mismatch}")
        stream = StepStream(stub.Step(), address)
        self.handshake = reply
        log.info("connected to worker at %s: layers [%d, %d) of %d, executor %s, "
                 "KV %d tokens", address, reply.layer_start, reply.layer_end,
                 reply.num_layers, reply.executor, reply.kv_capacity_tokens)
        return stream

    async def connect_with_backoff(self) -> StepStream:
        """Retry `connect` with exponential backoff until it succeeds (or is cancelled)."""
        delay, last = self.config.reconnect_initial_s, None
        while True:
            try:
                return await self.connect()
            except PipelineUnavailable as e:
                self.mark_down(f"{e}; retrying in {delay:.1f} s")
                # A long outage logs once per distinct reason, not once per attempt.
                log.log(logging.WARNING if str(e) != last else logging.DEBUG, "%s", self._reason)
                last = str(e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.config.reconnect_max_s)

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close()
