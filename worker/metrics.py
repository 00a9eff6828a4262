"""The worker's Prometheus metrics (own registry, own HTTP port): steps, their time, KV use,
open streams and whether the executor serves. The executor is wrapped, so the servicer and
the executors stay unaware of metrics."""
from __future__ import annotations

import time

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               start_http_server)

from proto import pipeline_pb2 as pb

# Seconds; from 100 µs (a local step on a GPU) to seconds (a long prefill on a CPU).
STEP_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                  0.25, 0.5, 1.0, 2.5, 5.0)


class WorkerMetrics:
    """duet_worker_* metrics; `wrap` the executor, `track` the service, then `serve`."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry or CollectorRegistry()
        ProcessCollector(registry=r)  # process_resident_memory_bytes etc. (duet load)
        self.steps = Counter("duet_worker_steps", "Steps run by the executor.", registry=r)
        self.failed = Counter("duet_worker_step_failures", "Steps the executor could not run.",
                              registry=r)
        self.step_s = Histogram("duet_worker_step_seconds", "Executor time of one step: "
                                "tail forward and sampling (and the hop into Triton).",
                                buckets=STEP_BUCKETS_S, registry=r)
        self.tail_s = Histogram("duet_worker_tail_seconds", "The tail's own time of one step "
                                "(forward and sampling; inside Triton for the triton executor: "
                                "step minus this is the hop into Triton).",
                                buckets=STEP_BUCKETS_S, registry=r)
        self.tokens = Counter("duet_worker_tokens", "New tokens through the tail.", registry=r)
        self.kv_used = Gauge("duet_worker_kv_used_tokens", "KV slots in use on the tail.",
                             registry=r)
        self.kv_capacity = Gauge("duet_worker_kv_capacity_tokens", "KV slots of the tail.",
                                 registry=r)
        self.streams = Gauge("duet_worker_streams_open", "Step streams from APIs.", registry=r)
        self.serving = Gauge("duet_worker_serving", "1 while the executor can run steps.",
                             registry=r)
        self._server = None

    def wrap(self, executor) -> MeteredExecutor:
        self.serving.set_function(lambda: 1.0 if executor.serving() else 0.0)
        return MeteredExecutor(executor, self)

    def track(self, service) -> None:
        self.streams.set_function(lambda: float(len(service.open_streams)))

    def serve(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        self._server, _thread = start_http_server(int(port), host, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


class MeteredExecutor:
    """An Executor that records each step; everything else goes straight through."""

    def __init__(self, inner, metrics: WorkerMetrics):
        self.inner, self.metrics = inner, metrics
        self.kind = inner.kind

    async def step(self, stream: str, request: pb.StepRequest) -> pb.StepReply:
        started = time.perf_counter()
        try:
            reply = await self.inner.step(stream, request)
        except Exception:
            self.metrics.failed.inc()
            raise
        m = self.metrics
        m.step_s.observe(time.perf_counter() - started)
        m.tail_s.observe(reply.worker_compute_s)
        m.steps.inc()
        m.tokens.inc(sum(s.num_tokens for s in request.seqs))
        m.kv_used.set(reply.kv_used_tokens)
        m.kv_capacity.set(reply.kv_capacity_tokens)
        return reply

    async def start(self) -> pb.HandshakeReply:
        return await self.inner.start()

    async def drop_stream(self, stream: str) -> None:
        await self.inner.drop_stream(stream)

    async def expire_idle(self) -> None:
        await self.inner.expire_idle()

    def serving(self) -> bool:
        return self.inner.serving()

    async def wait_failed(self) -> str:
        return await self.inner.wait_failed()

    async def close(self) -> None:
        await self.inner.close()
