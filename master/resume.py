"""Resumable responses: a request's events outlive its HTTP connection.

Every response is produced by a task of its own into a `ResumableRun`, and any number of
connections read it from any position. A client that lost its stream re-POSTs the same body
with the same request id (the `X-Request-Id` it sent or was given) and `Last-Event-ID`
(`<request id>:<event index>`, the SSE standard) and reads on from the next event; a
non-streaming re-POST gets the same completion. Event ids are a function of the request id
and the position only, so another API process that regenerates the same tokens (the standby,
after the worker handed it the sequences: worker/orphans.py) emits the same ids for the same
text. A run without readers keeps going for `resume_detached_s`, then is cancelled (its
sequences freed); finished runs are kept `resume_keep_s`, at most `resume_keep_bytes` in all.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
import time
import uuid
from dataclasses import dataclass
from typing import AsyncIterator

from fastapi import Request

from master.errors import APIError

REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
ERROR_EVENT = 'data: {"error":'  # how sse.sse_error starts


@dataclass(frozen=True)
class ResumeLimits:
    """How long runs live without readers, and how much finished output is kept."""

    detached_s: float = 10.0  # a run whose client left keeps going this long for a resume
    keep_s: float = 60.0  # a finished run's events stay readable this long
    keep_bytes: int = 64 * 2**20  # finished runs' events kept in all (oldest dropped first)


def request_id_of(request: Request, prefix: str) -> tuple[str, bool]:
    """The client's X-Request-Id (True) or a new `<prefix>-<hex>` (False); 400 if malformed."""
    given = request.headers.get("x-request-id")
    if given is None:
        return f"{prefix}-{uuid.uuid4().hex}", False
    if not REQUEST_ID.fullmatch(given):
        raise APIError(400, "X-Request-Id: 1 to 128 characters of A-Z a-z 0-9 . _ -",
                       param="X-Request-Id")
    return given, True


def last_event_index(request: Request, request_id: str) -> int:
    """The index Last-Event-ID names (-1 when absent); 400 when it is not this request's."""
    value = request.headers.get("last-event-id")
    if value is None:
        return -1
    rid, _, index = value.rpartition(":")
    if rid != request_id or not index.isdigit():
        raise APIError(400, f"Last-Event-ID: expected '{request_id}:<event index>' (the id of "
                       f"an event of this request), got {value!r}", param="Last-Event-ID")
    return int(index)


def body_digest(key_id: str, path: str, body_json: str) -> str:
    """What a resuming request must repeat: the same key, endpoint and body."""
    return hashlib.sha256(f"{key_id}\n{path}\n{body_json}".encode()).hexdigest()


class ResumableRun:
    """One response as it is produced: SSE events (or one JSON body), readable from anywhere."""

    def __init__(self, request_id: str, digest: str, stream: bool):
        self.request_id, self.digest, self.stream = request_id, digest, stream
        self.events: list[str] = []  # "data: …\n\n" without ids; a JSON body when not stream
        self.error: APIError | None = None  # failed before its first event
        self.failed = False  # its stream carries an error event (sse.sse_error)
        self.done = False
        self.finished_s = 0.0  # monotonic, once done
        self.size_bytes = 0
        self.readers = 0
        self.task: asyncio.Task | None = None
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def produce(self, events: AsyncIterator[str]) -> None:
        try:
            async for event in events:
                self.failed = self.failed or event.startswith(ERROR_EVENT)
                self.events.append(event)
                self.size_bytes += len(event)
                self._notify()
        except APIError as e:
            self.error = e
        except Exception as e:  # a failure after the first event is inside the events
            self.error = APIError(500, f"internal error: {e!r}")
        finally:
            self.done, self.finished_s = True, time.monotonic()
            self._notify()

    async def wait(self, count: int) -> None:
        """Until at least `count` events exist, or the run is done."""
        while len(self.events) < count and not self.done:
            await self._changed.wait()

    async def read(self, after: int) -> AsyncIterator[str]:
        """Events after index `after`, each with its `id:` line, as they come."""
        index = after + 1
        while True:
            await self.wait(index + 1)
            if index >= len(self.events):
                return
            # after the data line: readers that split on "data: " keep working
            yield f"{self.events[index][:-1]}id: {self.request_id}:{index}\n\n"
            index += 1
