"""Reference servers for hop_latency.py, each run as its own process:

  echo PORT            a bare grpc.aio bidi stream sending every message back: gRPC's floor
  noop PORT BUSY_S     the worker's real Pipeline service over an executor that computes
                       nothing but holds the CPU for BUSY_S per step (0 = answers at once):
                       what the service code costs, and what a busy process pays on this host
"""
from __future__ import annotations

import asyncio
import sys
import time

import grpc

from proto import pipeline_pb2 as pb
from worker.server import PipelineService, make_server


class BusyExecutor:
    """Answers every sequence with token 0 after spinning for busy_s (no model at all)."""

    kind = "noop"

    def __init__(self, busy_s: float):
        self.busy_s = busy_s

    async def step(self, stream: str, request: pb.StepRequest) -> pb.StepReply:
        start = time.perf_counter()
        while time.perf_counter() - start < self.busy_s:
            pass
        results = [pb.SeqResult(seq_id=s.seq_id, sampled=pb.Sampled(token_id=0))
                   for s in request.seqs]
        return pb.StepReply(step_id=request.step_id, results=results,
                            worker_compute_s=time.perf_counter() - start)

    async def drop_stream(self, stream: str) -> None:
        pass


async def echo(port: int) -> None:
    async def handler(requests, context):
        async for message in requests:
            yield message

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Echo", {"Echo": grpc.stream_stream_rpc_method_handler(handler)}),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def noop(port: int, busy_s: float) -> None:
    service = PipelineService(BusyExecutor(busy_s), max_message_bytes=64 << 20)
    service.info = pb.HandshakeReply(executor="noop")
    server, _, _ = make_server(service, f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    asyncio.run(echo(port) if kind == "echo" else noop(port, float(sys.argv[3])))
