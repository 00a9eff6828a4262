"""The `local` executor over a tensor-parallel tail: this process is rank 0 and serves; the
other ranks are its children (engine/rank_launcher.py).

When a rank dies or stops answering, the step fails with UNAVAILABLE (the API answers 503),
and the executor restarts every rank and reloads the tail in the background; steps meanwhile
fail UNAVAILABLE at once, and health says NOT_SERVING. The restarted tail holds no sequence:
the streams' old sequences fail NOT_FOUND, as after a Triton restart. After
`max_restarts_in_row` failed restarts the executor gives up and the worker exits 1.
"""
from __future__ import annotations

import asyncio
import logging

from engine.parallel import RankFailure
from engine.rank_launcher import RankLauncher
from proto import pipeline_pb2 as pb
from worker.config import WorkerConfig
from worker.executor import ExecutorUnavailable, LocalExecutor, tail_loader

log = logging.getLogger(__name__)


class TPExecutor(LocalExecutor):
    """LocalExecutor whose tail spans `tensor_parallel_size` rank processes."""

    max_restarts_in_row = 3

    def __init__(self, config: WorkerConfig):
        super().__init__(config)
        self.launcher = RankLauncher(config.tensor_parallel_size, config.device,
                                     timeout_s=config.tp_timeout_s)
        self.restarting: asyncio.Task | None = None
        self.failed = asyncio.Event()
        self.why = ""

    async def start(self) -> pb.HandshakeReply:
        try:
            self.tail = await asyncio.to_thread(tail_loader(self.config, self.launcher))
        except BaseException:
            await asyncio.to_thread(self.launcher.stop)
            raise
        info = self.tail.info()
        info.executor = self.kind
        return info

    async def step(self, stream: str, request: pb.StepRequest) -> pb.StepReply:
        if self.tail is None:
            raise ExecutorUnavailable("the tail's tensor-parallel ranks are restarting")
        try:
            return self.tail.step(stream, request)
        except RankFailure as e:
            self._restart(e)
            raise ExecutorUnavailable(f"a tensor-parallel rank failed ({e}); restarting") from None

    async def drop_stream(self, stream: str) -> None:
        if self.tail is not None:
            self.tail.drop_stream(stream)

    async def expire_idle(self) -> None:
        if self.tail is not None:
            self.tail.expire_idle()

    def _restart(self, error: RankFailure) -> None:
        log.error("tail failed: %s; restarting its ranks (every sequence it held is lost)", error)
        self.tail = None
        if self.restarting is None:
            self.restarting = asyncio.ensure_future(self._reload())

    async def _reload(self) -> None:
        try:
            for attempt in range(1, self.max_restarts_in_row + 1):
                try:
                    await asyncio.to_thread(self.launcher.stop)
                    self.tail = await asyncio.to_thread(tail_loader(self.config, self.launcher))
                    log.warning("tail ranks restarted (attempt %d): serving again", attempt)
                    return
                except (RankFailure, OSError) as e:
                    log.error("restarting the tail's ranks failed (attempt %d): %s", attempt, e)
                    self.why = f"tensor-parallel ranks failed to restart: {e}"
            self.failed.set()
        finally:
            self.restarting = None

    async def wait_failed(self) -> str:
        await self.failed.wait()
        return self.why

    async def close(self) -> None:
        if self.restarting is not None:
            self.restarting.cancel()
        self.tail = None
        await asyncio.to_thread(self.launcher.stop)
