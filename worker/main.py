"""`duet worker --config FILE`: load the tail, serve the Pipeline until SIGTERM/SIGINT.

Importable too, for a caller that runs a worker inside its own event loop:
`await run_worker(config, ready)` serves until cancelled; `Worker(config)` with
start()/stop() when the caller also needs the bound port (listen = "127.0.0.1:0").
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from pathlib import Path

import grpc

from runtime.gc_freeze import freeze_loaded_objects
from runtime.gil import shorten_gil_switch_interval
from runtime.sd_notify import supervise
from engine.errors import CheckpointError
from engine.manifest import Manifest
from proto import pipeline_pb2 as pb
from worker.config import WorkerConfig
from worker.executor import Executor, ExecutorFailed, ExecutorUnavailable, LocalExecutor
from worker.metrics import WorkerMetrics
from worker.server import PipelineService, make_server, set_serving
from worker.triton_process import TritonStartError
from worker.triton_repo import TritonNotInstalled, write_model_repo

log = logging.getLogger("worker")
# Failures that are the operator's to fix: reported as one line, not a traceback.
STARTUP_ERRORS = (CheckpointError, TritonStartError, TritonNotInstalled, ExecutorUnavailable,
                  ExecutorFailed, OSError, ValueError)
# Of those, the ones that mean the config or the checkpoint is wrong: exit code 2.
BAD_INPUT_ERRORS = (CheckpointError, ValueError, FileNotFoundError)


def make_executor(config: WorkerConfig) -> Executor:
    if config.executor == "local" and config.tensor_parallel_size > 1:
        from worker.tp_executor import TPExecutor

        return TPExecutor(config)
    if config.executor == "local":
        return LocalExecutor(config)
    from worker.triton_executor import TritonExecutor  # imports tritonclient only when used

    return TritonExecutor(config)


def server_credentials(config: WorkerConfig) -> grpc.ServerCredentials | None:
    """TLS from the configured PEM files; with a client CA, clients must present a cert."""
    if not config.tls:
        return None
    key, cert = Path(config.tls_key_file).read_bytes(), Path(config.tls_cert_file).read_bytes()
    ca = Path(config.tls_client_ca_file).read_bytes() if config.tls_client_ca_file else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=ca is not None)


def attach_manifest(info: pb.HandshakeReply, model_dir: str) -> None:
    """The checkpoint's SHA256SUMS into the handshake reply, so the API can compare."""
    manifest = Manifest.read(model_dir)
    if manifest is not None:
        info.manifest_digest = manifest.digest()
        info.manifest.extend(pb.ManifestEntry(path=path, sha256=sha)
                             for path, sha in manifest.entries)


class Worker:
    """One worker: executor + gRPC server + idle sweeper."""

    def __init__(self, config: WorkerConfig):
        self.config = config
        self.executor = make_executor(config)
        self.metrics = WorkerMetrics() if config.metrics_listen else None
        if self.metrics is not None:
            self.executor = self.metrics.wrap(self.executor)
        self.service = PipelineService(self.executor, config.max_message_bytes,
                                       config.tls_client_names)
        if self.metrics is not None:
            self.metrics.track(self.service)
        self.server, self.health, self.port = make_server(
            self.service, config.listen, credentials=server_credentials(config))
        self.sweeper: asyncio.Task | None = None
        self.created_at = time.monotonic()
        self.startup_s = 0.0  # construction to serving, told to the APIs when draining

    async def start(self) -> None:
        """Listen at once (health NOT_SERVING), load the tail, then serve."""
        await set_serving(self.health, False)
        await self.server.start()
        if self.metrics is not None:
            self.metrics.serve(self.config.metrics_listen)
        started_s = time.perf_counter()
        try:
            info = await self.executor.start()
        except BaseException:
            await self.stop()
            raise
        self.service.info = info
        info.max_message_bytes = self.config.max_message_bytes
        attach_manifest(info, self.config.model_dir)
        security = ("mutual TLS" if self.config.tls_client_ca_file
                    else "TLS" if self.config.tls else "plaintext")
        log.info("worker ready: executor %s, layers [%d, %d) of %d, device %s, dtype %s, "
                 "KV %d tokens, loaded in %.1f s; listening on port %d (%s)",
                 info.executor, info.layer_start, info.layer_end, info.num_layers,
                 self.config.device, info.dtype, info.kv_capacity_tokens,
                 time.perf_counter() - started_s, self.port, security)
        self.sweeper = asyncio.create_task(self._sweep(), name="idle-sweeper")
        self.startup_s = time.monotonic() - self.created_at
        await set_serving(self.health, True)

    async def drain(self, timeout_s: float) -> None:
        """SIGTERM: health NOT_SERVING, every API asked to pause; wait (up to timeout_s) until
        they have closed their streams, after the steps they had sent are answered."""
        if self.sweeper:
            self.sweeper.cancel()  # it would set the health status back
        await set_serving(self.health, False)
        streams = len(self.service.open_streams)
        log.info("draining: %d streams asked to pause, up to %g s (drain_timeout_s)",
                 streams, timeout_s)
        self.service.drain(pb.Drain(reason="the worker is stopping (SIGTERM)",
                                    startup_s=self.startup_s))
        deadline = time.monotonic() + timeout_s
        while self.service.open_streams and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self.service.open_streams:
            log.warning("drain_timeout_s passed: %d streams still open are cut",
                        len(self.service.open_streams))

    async def _sweep(self) -> None:
        """Expire idle sequences; keep the health status in step with the executor."""
        period_s = min(1.0, self.config.idle_timeout_s / 4)
        serving = True
        while True:
            await asyncio.sleep(period_s)
            if self.executor.serving() != serving:
                serving = not serving
                await set_serving(self.health, serving)
            if not serving:
                continue
            try:
                await self.executor.expire_idle()
            except Exception as e:  # the sweeper must outlive any one failure
                log.warning("idle sweep failed: %s", e)

    async def stop(self, grace_s: float = 2.0) -> None:
        if self.sweeper:
            self.sweeper.cancel()
        await self.server.stop(grace_s)
        await self.service.close()
        await self.executor.close()
        if self.metrics is not None:
            self.metrics.close()
        log.info("worker stopped")


async def run_worker(config: WorkerConfig, ready: asyncio.Event | None = None,
                     drain: asyncio.Event | None = None) -> None:
    """Serve until cancelled, `drain` is set (then drain first) or ExecutorFailed; `ready` is
    set once the tail is serving."""
    worker = Worker(config)
    await worker.start()
    if ready is not None:
        ready.set()
    failed = asyncio.ensure_future(worker.executor.wait_failed())
    draining = asyncio.ensure_future((drain or asyncio.Event()).wait())
    try:
        await asyncio.wait({failed, draining}, return_when=asyncio.FIRST_COMPLETED)
        if failed.done():
            raise ExecutorFailed(f"{failed.result()}; exiting so that a supervisor restarts "
                                 "the worker")
        await worker.drain(config.drain_timeout_s)
    finally:
        failed.cancel()
        draining.cancel()
        await asyncio.shield(worker.stop())


async def _serve_until_signal(config: WorkerConfig) -> None:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()

    ready, drain = asyncio.Event(), asyncio.Event()

    def stop() -> None:  # once: a second signal must not cut the orderly stop short
        if ready.is_set():
            drain.set()  # serving: the APIs pause and hand their streams to the next worker
        elif not task.cancelling():
            task.cancel()  # still loading: nothing to hand over

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    systemd = asyncio.create_task(supervise(ready, "worker serving"))
    freeze = asyncio.create_task(_freeze_when(ready))
    try:
        await run_worker(config, ready, drain)
    except asyncio.CancelledError:
        pass
    finally:
        systemd.cancel()
        freeze.cancel()


async def _freeze_when(ready: asyncio.Event) -> None:
    """Once serving, this process's loaded objects go out of the full GC passes."""
    await ready.wait()
    freeze_loaded_objects()


def run_cli(config: WorkerConfig, write_model_repo_dir: str | None = None) -> int:
    """What `duet worker` does with a parsed config (duet/cmd_worker.py reads it before torch
    loads); returns the exit code (2: bad checkpoint, 1: failed to start for another reason,
    such as a port in use or Triton failing)."""
    if write_model_repo_dir:
        path = write_model_repo(config, write_model_repo_dir)
        print(f"wrote {path}; mount {write_model_repo_dir} as Triton's --model-repository")
        return 0
    shorten_gil_switch_interval()  # the gRPC poller thread answers behind a busy loop
    try:
        asyncio.run(_serve_until_signal(config))
    except STARTUP_ERRORS as e:
        print(f"duet worker: {e}", file=sys.stderr)
        return 2 if isinstance(e, BAD_INPUT_ERRORS) else 1
    return 0
