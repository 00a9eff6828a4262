"""The run registry on its own: finished runs are forgotten by age and by total size (memory
stays flat), a run without readers is cancelled after resume_detached_s, and an id reused by
another body is a 409."""
from __future__ import annotations

import asyncio

import pytest

from master.errors import APIError
from master.resume import ResumableRun, ResumeLimits
from master.resume_registry import RunRegistry


async def events(count: int, size: int = 10, pause_s: float = 0.0):
    for i in range(count):
        await asyncio.sleep(pause_s)
        yield f"data: {str(i) * size}\n\n"


async def finished(runs: RunRegistry, request_id: str, count: int, size: int = 10):
    run = runs.start(ResumableRun(request_id, "digest", stream=True), events(count, size))
    await run.task
    return run


async def test_finished_runs_are_forgotten_past_keep_bytes_oldest_first():
    runs = RunRegistry(ResumeLimits(detached_s=1.0, keep_s=60.0, keep_bytes=300))
    for i in range(4):
        await finished(runs, f"r{i}", count=10)  # ~150 bytes each
    assert runs.find("r3", "digest") is not None
    assert runs.find("r0", "digest") is None and runs.find("r1", "digest") is None
    with pytest.raises(APIError) as e:
        runs.find("r3", "another body")
    assert e.value.status == 409


async def test_finished_runs_are_forgotten_after_keep_s():
    runs = RunRegistry(ResumeLimits(detached_s=1.0, keep_s=0.05, keep_bytes=1 << 20))
    run = await finished(runs, "old", count=3)
    assert [e async for e in run.read(0)][0].endswith("id: old:1\n\n")  # events after 0
    await asyncio.sleep(0.1)
    assert runs.find("old", "digest") is None and len(runs) == 0


async def test_a_run_nobody_reads_is_cancelled_after_detached_s():
    runs = RunRegistry(ResumeLimits(detached_s=0.05, keep_s=60.0, keep_bytes=1 << 20))
    run = runs.start(ResumableRun("slow", "digest", stream=True), events(1000, pause_s=0.01))
    runs._attach(run)
    runs._detach(run)  # the client left
    await asyncio.sleep(0.3)
    assert run.task.cancelled() and len(run.events) < 100 and len(runs) == 0


async def test_a_stream_that_ended_in_an_error_event_is_run_again_on_resume():
    async def failing():
        yield "data: {}\n\n"
        yield 'data: {"error":{"message":"the worker was lost"}}\n\n'

    runs = RunRegistry(ResumeLimits())
    run = runs.start(ResumableRun("lost", "digest", stream=True), failing())
    await run.task
    assert run.failed and runs.find("lost", "digest") is None  # the re-POST starts anew
