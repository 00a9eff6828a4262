"""Where the tail runs. The server calls an Executor; `local` runs the TailRunner in this
process, `triton` (worker/triton_executor.py) runs the same TailRunner inside Triton."""
from __future__ import annotations

import asyncio
from typing import Callable, Protocol

import torch

from engine.decode_graphs import graph_batch_for
from proto import pipeline_pb2 as pb
from worker.config import WorkerConfig
from worker.tail import TailRunner


class ExecutorUnavailable(Exception):
    """The executor cannot run steps right now (Triton died and is restarting)."""


class ExecutorFailed(Exception):
    """The executor can never run steps again (Triton keeps failing to restart)."""


class Executor(Protocol):
    """What the gRPC server needs from a tail executor; every method may be awaited
    concurrently by several streams, the executor serializes them."""

    kind: str

    async def start(self) -> pb.HandshakeReply:
        """Load the tail; returns what the handshake reports (executor kind included)."""

    async def step(self, stream: str, request: pb.StepRequest) -> pb.StepReply:
        """Run one checked-for-order step of `stream`; raises ExecutorUnavailable."""

    async def drop_stream(self, stream: str) -> None:
        """Release every sequence of a stream that ended or broke."""

    async def expire_idle(self) -> None:
        """Release sequences idle longer than the configured idle timeout."""

    def serving(self) -> bool:
        """False while the executor cannot run steps (health says NOT_SERVING)."""

    async def wait_failed(self) -> str:
        """Return why, once the executor can never serve again: the worker then exits 1,
        so that `duet serve` or systemd restarts it."""

    async def close(self) -> None:
        """Free everything the executor holds (processes, threads, files)."""


def tail_loader(config: WorkerConfig, launcher=None) -> Callable[[], TailRunner]:
    """A function that loads the tail the config describes (run where the tail will live);
    launcher: the RankLauncher of a tensor-parallel tail."""

    def load() -> TailRunner:
        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        return TailRunner.load(
            config.model_dir, config.layer_start, dtype=config.dtype, device=config.device,
            kv_cache_bytes=config.kv_cache_bytes, block_size=config.kv_block_size,
            idle_timeout_s=config.idle_timeout_s, fp8=config.fp8,
            stream_kv_share=config.stream_kv_share,
            stream_max_seqs=config.stream_max_seqs, orphan_grace_s=config.orphan_grace_s,
            cuda_graph_max_batch=graph_batch_for(config.device, config.cuda_graph_max_batch),
            launcher=launcher,
        )

    return load


class LocalExecutor:
    """The tail in this process, run on the event loop itself. The tail is one serialized
    resource, so a step blocking the loop only delays what would wait for the tail anyway
    (gRPC keepalives run in gRPC's own threads); it saves two thread hand-offs per step,
    which on a busy host cost more than the whole gRPC hop (bench/worker/results.md)."""

    kind = "local"

    def __init__(self, config: WorkerConfig):
        self.config = config
        self.tail: TailRunner | None = None

    async def start(self) -> pb.HandshakeReply:
        # Loading takes seconds to minutes: off the loop, so health checks answer meanwhile.
        self.tail = await asyncio.to_thread(tail_loader(self.config))
        info = self.tail.info()
        info.executor = self.kind
        return info

    async def step(self, stream: str, request: pb.StepRequest) -> pb.StepReply:
        return self.tail.step(stream, request)

    async def drop_stream(self, stream: str) -> None:
        self.tail.drop_stream(stream)

    async def expire_idle(self) -> None:
        self.tail.expire_idle()

    def serving(self) -> bool:
        return self.tail is not None

    async def wait_failed(self) -> str:
        await asyncio.Event().wait()  # the tail lives in this process: it cannot fail alone
        return ""

    async def close(self) -> None:
        self.tail = None
