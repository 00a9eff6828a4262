"""A draining API waits for a recent /ready poller (the VRRP agent) to be told, and only then."""
import asyncio
import time

from master.ready_watch import ReadyWatch


async def test_a_drain_waits_until_a_recent_poller_was_told_draining():
    watch = ReadyWatch()
    started = time.monotonic()
    assert await watch.wait_told(5.0) is False  # nobody polls /ready: no wait at all
    assert time.monotonic() - started < 1.0
    watch.probed(draining=False)
    waiting = asyncio.create_task(watch.wait_told(5.0))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    watch.probed(draining=True)
    assert await asyncio.wait_for(waiting, 1.0) is True


async def test_the_wait_ends_at_the_deadline_when_the_poller_went_quiet():
    watch = ReadyWatch()
    watch.probed(draining=False)
    started = time.monotonic()
    assert await watch.wait_told(0.2) is False
    assert 0.15 < time.monotonic() - started < 2.0
