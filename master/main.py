"""`duet master --config FILE`: load the head, connect to the worker, serve the OpenAI API.

The standby API on host B is this same process with `role = "standby"`: it loads (a cold
standby, `standby_mode = "cold"`, only once activated: master/cold_standby.py), connects,
answers /health and /ready, but its /v1 API answers 503 until the VRRP agent's notify hook
posts a MASTER event to `/admin/vrrp` (master/admin.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from dataclasses import dataclass
from typing import Callable

import torch
import uvicorn
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from engine.decode_graphs import graph_batch_for
from engine.fingerprint import checkpoint_fingerprint
from engine.manifest import Manifest
from master.admin import AdminAccess, RealPeer, admin_router
from master.api_keys import exposure_warnings
from master.app import create_app
from master.auth import ApiKeyChecker
from master.bundle import ModelBundle
from master.cold_standby import ColdStandby
from master.config import MasterConfig
from master.head import Head
from master.metrics import Metrics
from master.pipeline_client import HeadIdentity, PipelineClient, PipelineClientConfig
from master.pipeline_generator import PipelineGenerator
from master.scheduler import SchedulerConfig
from runtime.gil import shorten_gil_switch_interval

log = logging.getLogger("duet.master")


@dataclass
class Master:
    """The loaded pieces of one API process."""

    config: MasterConfig
    generator: PipelineGenerator | ColdStandby
    app: object  # the FastAPI app


def build(config: MasterConfig) -> Master:
    """Load tokenizer and template, and the head now (or, for a cold standby, on
    activation); wire them to a (not yet started) pipeline."""
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)  # a CPU host shared with the worker
    shorten_gil_switch_interval()  # the head thread answers behind 64 streams' SSE writes
    bundle = ModelBundle.load(config.model_dir, config.max_model_len, config.reasoning_parser,
                              config.tool_call_parser)
    metrics = Metrics(config.served_model_name)
    if config.role == "standby" and config.standby_mode == "cold":
        generator = ColdStandby(lambda: build_pipeline(config, metrics))
    else:
        generator = build_pipeline(config, metrics)
    app = create_app(config, generator, bundle, metrics=metrics)
    warnings = exposure_warnings(config.host, config.api_keys)
    for warning in warnings:
        log.warning("%s", warning)
    access = AdminAccess(ApiKeyChecker(config.admin_keys), config.admin_from_loopback, warnings)
    app.include_router(admin_router(generator, access))
    return Master(config, generator, app)


def build_pipeline(config: MasterConfig, metrics: Metrics) -> PipelineGenerator:
    """The head's weights and the pipeline to the worker (not started)."""
    head = Head.load(
        config.model_dir, config.head_layer_end, dtype=config.dtype, device=config.device,
        kv_cache_bytes=config.kv_cache_bytes, block_size=config.kv_block_size, fp8=config.fp8,
        cuda_graph_max_batch=graph_batch_for(config.device, config.cuda_graph_max_batch),
        tensor_parallel_size=config.tensor_parallel_size, tp_timeout_s=config.tp_timeout_s,
    )
    identity = HeadIdentity(checkpoint_fingerprint(config.model_dir), config.head_layer_end,
                            config.dtype, head.hidden_size, Manifest.read(config.model_dir))
    client = PipelineClient(PipelineClientConfig(
        worker_address=config.worker_address,
        client_name=f"{config.role}@{socket.gethostname()}",
        max_message_bytes=config.max_message_bytes,
        tls_ca_file=config.tls_ca_file, tls_cert_file=config.tls_cert_file,
        tls_key_file=config.tls_key_file, reconnect_max_s=config.reconnect_max_s,
    ), identity)
    scheduling = SchedulerConfig(
        max_num_seqs=config.max_num_seqs, max_waiting=config.max_waiting,
        step_token_budget=config.step_token_budget, kv_block_size=config.kv_block_size,
        max_inflight_batches=config.max_inflight_batches,
        enable_prefix_caching=config.enable_prefix_caching,
    )
    return PipelineGenerator(head, client, scheduling, metrics=metrics,
                             step_timeout_s=config.step_timeout_s,
                             recovery_budget_s=config.recovery_budget_s,
                             active=config.role == "master")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `run` owns SIGINT/SIGTERM and shutdown order."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


async def run(config: MasterConfig, *, stop: asyncio.Event | None = None,
              on_ready: Callable[[str], None] | None = None) -> None:
    """Serve until `stop` is set (or SIGINT/SIGTERM when no event is given)."""
    master = await asyncio.to_thread(build, config)
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    server = _Server(uvicorn.Config(_asgi(master.app, config), host=config.host,
                                    port=config.port, log_level="warning", access_log=False,
                                    lifespan="off", proxy_headers=False))
    sock = _bind(config.host, config.port)  # here, so a taken port is one readable line
    master.generator.start()
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    stopping = asyncio.create_task(stop.wait())
    try:
        while not server.started and not serving.done():
            await asyncio.sleep(0.02)
        if not serving.done():
            url = _url(config.host, sock.getsockname()[1])
            log.info("serving %s on %s (role %s)", config.served_model_name, url, config.role)
            if on_ready is not None:
                on_ready(url)
            await asyncio.wait([serving, stopping], return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():
                await _drain(master, config.drain_timeout_s)
    finally:
        server.should_exit = True
        stopping.cancel()
        await asyncio.gather(serving, stopping, return_exceptions=True)
        await master.generator.close()
        sock.close()
        log.info("master stopped")


async def _drain(master: Master, timeout_s: float) -> None:
    """SIGTERM: new requests get 503 + Retry-After, running ones finish (up to timeout_s);
    a VRRP agent polling /ready is told before the API exits (master/ready_watch.py)."""
    served = master.generator
    generator = served.generator if isinstance(served, ColdStandby) else served
    if generator is None:  # a cold standby never loaded: nothing runs
        return
    deadline = time.monotonic() + timeout_s
    running = len(generator.scheduler.running) + len(generator.scheduler.waiting)
    log.info("draining: %d requests running, up to %g s (drain_timeout_s)", running, timeout_s)
    left = await generator.drain(timeout_s)
    if left:
        log.warning("drain_timeout_s passed: %d requests end with an error", left)
    if await master.app.state.ready_watch.wait_told(deadline - time.monotonic()):
        log.info("drained; /ready's poller (the VRRP agent) was told")


def _asgi(app, config: MasterConfig):
    """The app behind RealPeer; forwarded headers are honoured only from configured proxies
    (uvicorn's own proxy_headers stay off: by default it trusts 127.0.0.1 and reads the
    FORWARDED_ALLOW_IPS environment variable)."""
    if config.forwarded_allow_ips:
        app = ProxyHeadersMiddleware(app, trusted_hosts=config.forwarded_allow_ips)
    return RealPeer(app)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio sets TCP_NODELAY only on connections whose socket says
    # TCP. Without it each streamed chunk waited for the ACK of the one before (Nagle), which
    # the client delays up to 40 ms: tokens reached keep-alive clients in bursts, late
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def _url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
