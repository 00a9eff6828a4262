"""One drill: baseline, clients on, fault, recovery, repair, back to baseline, report."""
from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

from duet.drill.load import CLIENT_TIMEOUT
from duet.drill.report import build_report
from duet.drill.scenarios import Scenario

POLL_S = 0.01


class VipWatcher:
    """Who holds the VIP, polled every 10 ms: [(monotonic time, holders)] at each change."""

    def __init__(self, target):
        self.target = target
        self.changes: list[tuple[float, list[str]]] = [(time.monotonic(), target.holders())]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            holders = self.target.holders()
            if holders != self.changes[-1][1]:
                self.changes.append((time.monotonic(), holders))

    def stop(self) -> list[tuple[float, list[str]]]:
        self._stop.set()
        self._thread.join()
        return self.changes


def read_attempts(path: Path) -> list[dict]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.endswith("}")]


def wait_attempt(path: Path, pick, what: str, timeout_s: float, load) -> dict:
    """The first attempt `pick` accepts, waiting for the clients to record one."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = [a for a in read_attempts(path) if pick(a)]
        if found:
            return min(found, key=lambda a: a["end"])
        if load.poll() is not None:
            raise RuntimeError(f"drill: the clients exited: {load.stderr.read().decode()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"drill: no {what} within {timeout_s:.0f} s")
        time.sleep(0.05)


def run_drill(target, scenario: Scenario, attempts_file: Path, clients: int = 4,
              max_tokens: int = 8, timeout_s: float = 120.0, settle_s: float = 1.0) -> dict:
    target.wait_healthy(timeout_s)
    if scenario.prepare is not None:
        scenario.prepare(target)
    attempts_file.unlink(missing_ok=True)
    # A paused stream must outwait the restart; otherwise a stream on a dead host ends
    # with its read timeout, as a real client's would.
    read_timeout_s = timeout_s if scenario.pauses else CLIENT_TIMEOUT.read
    load = target.start_load(attempts_file, clients, max_tokens,
                             extra=("--read-timeout-s", str(read_timeout_s)))
    watcher = None
    try:
        wait_attempt(attempts_file, lambda a: a["ok"], "completion before the fault",
                     timeout_s, load)
        watcher = VipWatcher(target)
        fault = scenario.inject(target)
        if scenario.moves_vip_to:
            target.wait_vip_on(scenario.moves_vip_to, timeout_s)
        if scenario.pauses:  # the supervisor restarts it; the streams in flight complete
            repair = scenario.repair(target)
            wait_attempt(attempts_file, lambda a: a["ok"] and a["start"] < fault < a["end"],
                         "stream across the fault completed", timeout_s, load)
        else:
            wait_attempt(attempts_file, lambda a: a["ok"] and a["start"] >= fault,
                         "completion after the fault", timeout_s, load)
            time.sleep(settle_s)
            repair = scenario.repair(target)
        target.wait_healthy(timeout_s)  # everything ready, the VIP back on host A
        back = time.monotonic()
        for client in range(clients):  # every streaming client is served again, not
            # only the probe: a client stuck in a dead stream waits out its read timeout
            wait_attempt(attempts_file, lambda a, c=client: a["ok"] and a["start"] >= back
                         and a["client"] == c, f"completion of client {client} after the "
                         "repair", timeout_s, load)
        time.sleep(settle_s)
    finally:
        load.send_signal(signal.SIGTERM)
        load.wait(30)
        changes = watcher.stop() if watcher else []
    return build_report(scenario, clients, fault, repair, changes, read_attempts(attempts_file),
                        target.final_state())
