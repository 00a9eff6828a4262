"""Loaded by the servers of bench/serving/gc_pauses.py (this folder first on PYTHONPATH): each
garbage-collector pass of the oldest generation appended to $GC_PAUSE_LOG as
"ROLE PID UNIX_S MS"; with GC_PAUSE_NO_FREEZE=1, gc.freeze does nothing (the servers as before
runtime/gc_freeze.py)."""
import gc
import os
import sys
import time

_log = os.environ.get("GC_PAUSE_LOG")
_role = next((a for a in sys.argv if a in ("master", "worker")), None)
if _log and _role:
    _started = [0.0]

    def _timed(phase, info):
        if info["generation"] != 2:
            return
        if phase == "start":
            _started[0] = time.perf_counter()
            return
        with open(_log, "a") as f:
            f.write(f"{_role} {os.getpid()} {time.time():.4f} {(time.perf_counter() - _started[0]) * 1e3:.3f}\n")

    gc.callbacks.append(_timed)
    if os.environ.get("GC_PAUSE_NO_FREEZE") == "1":
        gc.freeze = lambda: None
