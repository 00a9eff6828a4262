"""The runs of one API process by request id: start, attach, detach, forget (master/resume.py
says what a run is and why)."""
from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from master.errors import APIError, ClientGone
from master.resume import (ResumableRun, ResumeLimits, body_digest, last_event_index,
                           request_id_of)
from master.sse import ClosingStreamingResponse


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_disconnect(request: Request, work: Awaitable):
    """work's result, or ClientGone (work cancelled) if the client leaves first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task in done:
        return task.result()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientGone()


class RunRegistry:
    """Request id -> its run; finished runs are forgotten after keep_s or past keep_bytes."""

    def __init__(self, limits: ResumeLimits):
        self.limits = limits
        self._runs: OrderedDict[str, ResumableRun] = OrderedDict()  # oldest first
        self._cancels: dict[str, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._runs)

    def find(self, request_id: str, digest: str) -> ResumableRun | None:
        """The run of this id, if kept; 409 when it was made by another key or body."""
        self._forget_old()
        run = self._runs.get(request_id)
        if run is not None and run.done and run.failed:
            # it ended with an error event (the worker was lost …): a resume runs it again,
            # and the worker may still hold its sequences for adoption
            del self._runs[request_id]
            return None
        if run is not None and run.digest != digest:
            raise APIError(409, f"X-Request-Id {request_id!r} belongs to another request (a "
                           "resume must repeat the same body with the same key)",
                           param="X-Request-Id", code="request_id_conflict")
        return run

    def start(self, run: ResumableRun, events: AsyncIterator[str]) -> ResumableRun:
        self._runs[run.request_id] = run
        run.task = asyncio.create_task(run.produce(events), name=f"run {run.request_id}")
        return run

    async def respond(self, request: Request, run: ResumableRun, after: int = -1) -> Response:
        """The run's response on this connection: its JSON body, or its events after `after`
        as SSE. A failure before the first event is its APIError (status and JSON body)."""
        self._attach(run)
        try:
            await until_disconnect(request, run.wait(1 if run.stream else 1 << 62))
            if run.error is not None and (not run.events or not run.stream):
                self._runs.pop(run.request_id, None)  # a retry starts afresh (429, 503 …)
                raise run.error
        except BaseException:
            if self._detach(run):  # cancelled: let it record its end before the log line
                await asyncio.gather(run.task, return_exceptions=True)
            raise
        if not run.stream:
            self._detach(run)
            return Response(run.events[0], media_type="application/json")
        return ClosingStreamingResponse(self._read(run, after))

    async def _read(self, run: ResumableRun, after: int) -> AsyncIterator[str]:
        try:
            async for event in run.read(after):
                yield event
        finally:
            self._detach(run)

    def _attach(self, run: ResumableRun) -> None:
        run.readers += 1
        timer = self._cancels.pop(run.request_id, None)
        if timer is not None:
            timer.cancel()

    def _detach(self, run: ResumableRun) -> bool:
        """One reader fewer; True when that cancelled the run (resume_detached_s = 0)."""
        run.readers -= 1
        if run.readers or run.done:
            return False
        if self.limits.detached_s <= 0:
            return self._cancel(run)
        loop = asyncio.get_running_loop()
        self._cancels[run.request_id] = loop.call_later(self.limits.detached_s,
                                                        self._cancel, run)
        return False

    def _cancel(self, run: ResumableRun) -> bool:
        """Nobody came back: stop generating (frees the sequences); a later re-POST of this
        id starts a new run."""
        self._cancels.pop(run.request_id, None)
        if run.readers or run.done or run.task is None:
            return False
        if self._runs.get(run.request_id) is run:
            del self._runs[run.request_id]
        run.task.cancel()
        return True

    def _forget_old(self) -> None:
        now, limits = time.monotonic(), self.limits
        done = [r for r in self._runs.values() if r.done and not r.readers]
        kept_bytes = sum(r.size_bytes for r in done)
        for run in done:  # oldest first
            if now - run.finished_s <= limits.keep_s and kept_bytes <= limits.keep_bytes:
                continue
            kept_bytes -= run.size_bytes
            del self._runs[run.request_id]


@dataclass(frozen=True)
class Resumption:
    """Who a request is, for resuming: its id, whether the client chose it, what it must
    repeat, where its reader starts, and its run when this process still has it."""

    request_id: str
    client_given: bool  # the client chose the id: the worker may hold its sequences
    digest: str  # of key, endpoint and body (master/resume.py body_digest)
    after: int  # Last-Event-ID's event index; -1 = from the first event
    run: ResumableRun | None

    def resume_key(self, choice: int) -> str:
        """The key under which the worker keeps choice `choice`'s sequence for adoption by
        another API (worker/orphans.py): only the same request can name it."""
        return hashlib.sha256(f"{self.digest}/{choice}".encode()).hexdigest()[:32]


def resumption(runs: RunRegistry, request: Request, key_id: str, body: BaseModel,
               stream: bool, prefix: str) -> Resumption:
    """The request's id (X-Request-Id or a new one), its Last-Event-ID and its kept run."""
    request_id, given = request_id_of(request, prefix)
    after = last_event_index(request, request_id) if stream else -1
    digest = body_digest(key_id, request.url.path, body.model_dump_json())
    run = runs.find(request_id, digest) if given else None
    return Resumption(request_id, given, digest, after, run)

