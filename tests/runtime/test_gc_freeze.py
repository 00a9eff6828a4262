"""The servers' loaded objects out of the full GC passes (runtime/gc_freeze.py). Run in a child
interpreter: freezing this test process would keep every later test's garbage cycles."""
from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import gc, json, weakref
from runtime.gc_freeze import freeze_loaded_objects

class Node:
    pass

loaded = [Node() for _ in range(50_000)]  # what a server holds once it has loaded
tracked_before = len(gc.get_objects())
frozen = freeze_loaded_objects()

a, b = Node(), Node()  # garbage made while serving: a cycle, found by a pass as before
a.peer, b.peer = b, a
gone = weakref.ref(a)
del a, b
gc.collect()
print(json.dumps({"tracked_before": tracked_before, "tracked_after": len(gc.get_objects()),
                  "frozen": frozen, "cycle_collected": gone() is None,
                  "loaded_alive": len(loaded)}))
"""


def test_loaded_objects_leave_the_passes_and_new_cycles_are_still_collected():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         check=True, timeout=60)
    r = json.loads(out.stdout)
    assert r["frozen"] >= 50_000 and r["tracked_before"] >= 50_000
    assert r["tracked_after"] < 1_000  # a full pass now walks what was made since, not all
    assert r["cycle_collected"] and r["loaded_alive"] == 50_000


AT_EXIT = r"""
from runtime.gc_freeze import freeze_loaded_objects

class Finalized:  # what an extension's objects need at exit: to be collected, then counted
    def __del__(self):
        print("finalized", flush=True)

a, b = Finalized(), Finalized()
a.peer, b.peer = b, a
freeze_loaded_objects()
freeze_loaded_objects()  # a second freeze: still one unfreeze at exit
del a, b  # a cycle among the frozen objects, garbage from now on
"""


def test_frozen_objects_are_finalized_when_the_server_exits():
    out = subprocess.run([sys.executable, "-c", AT_EXIT], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["finalized", "finalized"], out.stdout + out.stderr
