"""The `triton` executor: the tail runs as a Python-backend model in Triton Inference Server,
either a tritonserver this worker starts and supervises, or an existing one at triton_url.
Calls go over one ModelStreamInfer stream (worker/triton_stream.py) as Triton's own messages
built from a template (worker/triton_wire.py); a step's hidden states travel as their own
UINT8 input rather than inside the re-serialized StepRequest."""
from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from pathlib import Path

import grpc
import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException

from proto import pipeline_pb2 as pb
from worker.config import WorkerConfig
from worker.executor import ExecutorUnavailable
from worker.triton_process import ManagedTriton
from worker.triton_protocol import Op
from worker.triton_repo import TritonInstall, write_model_repo
from worker.triton_stream import StreamBroken, TritonStream
from worker.triton_wire import CallTemplate, result_bytes

log = logging.getLogger(__name__)
# Triton's own limit; the Pipeline service already bounds a step by max_message_bytes.
_UNLIMITED = [("grpc.max_send_message_length", 2**31 - 1),
              ("grpc.max_receive_message_length", 2**31 - 1)]


class TailModelError(RuntimeError):
    """The tail model answered a call with an error (a bug there, not a lost server)."""


class TritonExecutor:
    """Sends each pipeline call to the tail model in Triton as one gRPC inference."""

    kind = "triton"

    def __init__(self, config: WorkerConfig):
        self.config = config
        self.model = config.triton_model_name
        self.server: ManagedTriton | None = None
        self.client: triton_grpc.InferenceServerClient | None = None  # readiness checks
        self.channel: grpc.aio.Channel | None = None  # the calls' stream
        self.own_run_dir: Path | None = None
        self.template = CallTemplate(self.model)
        self.stream: TritonStream | None = None  # opened by the first call after a break

    async def start(self) -> pb.HandshakeReply:
        url = self.config.triton_url or await self._start_server()
        self.client = triton_grpc.InferenceServerClient(url)
        self.channel = grpc.aio.insecure_channel(url, options=_UNLIMITED)
        if self.config.triton_url:
            await self._wait_external(url)
        info = pb.HandshakeReply.FromString(await self._call(Op.INFO, "", b""))
        info.executor = self.kind
        return info

    async def _start_server(self) -> str:
        install = TritonInstall.find()
        run_dir = Path(self.config.run_dir) if self.config.run_dir else None
        if run_dir is None:
            run_dir = self.own_run_dir = Path(tempfile.mkdtemp(prefix="duet-worker-"))
        repo = run_dir / "models"
        write_model_repo(self.config, repo)
        self.server = ManagedTriton(
            install, repo, run_dir, self.model, grpc_port=self.config.triton_grpc_port,
            http_port=self.config.triton_http_port,
            start_timeout_s=self.config.triton_start_timeout_s,
            server_args=self.config.triton_server_args,
            on_restart=lambda: log.warning("tail restarted inside Triton: every sequence "
                                           "it held is gone; their next steps fail NOT_FOUND"),
        )
        await self.server.start()
        return self.server.url

    async def _wait_external(self, url: str) -> None:
        deadline_s = time.monotonic() + self.config.triton_start_timeout_s
        while True:
            try:
                if await self.client.is_model_ready(self.model):
                    return
            except InferenceServerException:
                pass
            if time.monotonic() > deadline_s:
                raise ExecutorUnavailable(
                    f"Triton at {url} has no ready model {self.model!r} after "
                    f"{self.config.triton_start_timeout_s:g} s (is the model repository "
                    "written with `duet worker --write-model-repo` mounted there?)")
            await asyncio.sleep(0.5)

    def serving(self) -> bool:
        return self.server is None or self.server.ready.is_set()

    async def wait_failed(self) -> str:
        if self.server is None:  # an external Triton: its own supervisor restarts it
            await asyncio.Event().wait()
        await self.server.gave_up.wait()
        return self.server.why

    async def _call(self, op: Op, stream: str, payload: bytes, hidden: bytes = b"") -> bytes:
        if not self.serving():
            raise ExecutorUnavailable("tritonserver died and is restarting")
        request = self.template.request(op.value, stream, payload, hidden)
        if self.stream is None or self.stream.broken:
            self.stream = TritonStream(self.channel)
        try:
            response = await self.stream.call(request)
        except StreamBroken as e:
            raise ExecutorUnavailable(f"Triton: {e}") from None
        if response.error_message:
            raise TailModelError(f"the tail model in Triton failed: {response.error_message}")
        return result_bytes(response.infer_response)

    async def step(self, stream: str, request: pb.StepRequest) -> pb.StepReply:
        """The request's hidden bytes move to the HIDDEN input (the request is spent)."""
        hidden = request.hidden.data
        request.hidden.data = b""  # dtype and shape stay: the tail checks the bytes against them
        return pb.StepReply.FromString(await self._call(Op.STEP, stream,
                                                        request.SerializeToString(), hidden))

    async def drop_stream(self, stream: str) -> None:
        await self._call(Op.DROP_STREAM, stream, b"")

    async def expire_idle(self) -> None:
        await self._call(Op.EXPIRE_IDLE, "", b"")

    async def close(self) -> None:
        if self.stream is not None:
            await self.stream.close()
        if self.channel is not None:
            await self.channel.close()
        if self.client is not None:
            await self.client.close()
        if self.server is not None:
            await self.server.stop()
        if self.own_run_dir is not None:
            shutil.rmtree(self.own_run_dir, ignore_errors=True)
