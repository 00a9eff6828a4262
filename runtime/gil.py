"""How long a Python thread may hold the GIL while another waits for it.

Both stages run a busy asyncio loop beside threads that must answer quickly: the master's
head thread (the forward of the next micro-batch) and copy waiter, the worker's gRPC poller.
Every torch call drops the GIL and takes it back; with CPython's default 5 ms interval a
thread taking it back behind a busy loop (64 streams' SSE writes, the tail's per-sequence
work) waits up to 5 ms each time, on the critical path of a step whose whole budget is
~10 ms. 0.5 ms bounds that wait; the loop's own work is slowed by a few switches per step
(bench/serving/host_overhead.md: c64 through the API, side by side).
"""
from __future__ import annotations

import sys

SWITCH_INTERVAL_S = 0.0005


def shorten_gil_switch_interval() -> None:
    """Set the process's GIL switch interval (a process-wide interpreter setting)."""
    sys.setswitchinterval(SWITCH_INTERVAL_S)
