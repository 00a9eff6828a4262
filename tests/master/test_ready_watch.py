"""A draining API waits for a /ready poller (the VRRP agent) to be told, and only then."""
import asyncio
import time

from master.ready_watch import LATE_S, ReadyWatch


async def _poll(watch: ReadyWatch, times: int, interval_s: float) -> None:
    for _ in range(times):
        watch.probed(draining=False)
        await asyncio.sleep(interval_s)


async def test_a_drain_waits_until_a_polling_checker_was_told_draining():
    watch = ReadyWatch()
    started = time.monotonic()
    assert await watch.wait_told(5.0) is False  # nobody polls /ready: no wait at all
    assert time.monotonic() - started < 1.0
    await _poll(watch, 2, 0.5)
    waiting = asyncio.create_task(watch.wait_told(5.0))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    watch.probed(draining=True)
    assert await asyncio.wait_for(waiting, 1.0) is True


async def test_the_wait_ends_at_the_deadline_when_the_poller_went_quiet():
    watch = ReadyWatch()
    await _poll(watch, 2, 0.5)
    started = time.monotonic()
    assert await watch.wait_told(0.2) is False
    assert 0.15 < time.monotonic() - started < 2.0


async def test_a_gone_poller_is_waited_for_two_intervals_not_the_whole_drain():
    watch = ReadyWatch()
    await _poll(watch, 3, 0.05)
    started = time.monotonic()
    assert await watch.wait_told(30.0) is False
    assert time.monotonic() - started < 2 * 0.05 + LATE_S + 0.5


async def test_a_one_off_readiness_check_is_not_waited_for():
    watch = ReadyWatch()
    watch.probed(draining=False)  # a deploy script asked once
    started = time.monotonic()
    assert await watch.wait_told(30.0) is False
    assert time.monotonic() - started < 0.5
