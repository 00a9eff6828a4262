"""Loaded objects out of the garbage collector's full passes.

A serving process holds a few hundred thousand long-lived Python objects once it has loaded
(torch, the tokenizer, pydantic models, protobuf descriptors, the app). CPython's oldest
generation is collected every time enough objects have survived the younger ones, and a pass
walks every object it tracks: the master's event loop, its head thread and every stream stood
still for 93-117 ms a pass on a 2-core CPU host under bursts of requests
(bench/serving/gc_pauses.json), 108-142 ms on the H200 host, the worker for 79-87 ms
(bench/gpu/runs/s9_call2_gc_passes.log). Frozen, a pass takes 1-3 ms: frozen objects are
never walked again; what the requests allocate is collected as before. Only the servers'
entry points freeze (a test process building many servers would keep their garbage cycles).

At exit they are unfrozen again: the interpreter's last collection never looks at frozen
objects, so a cycle among them was never finalized, and extension modules that count their
objects at exit (triton's nanobind bindings) printed ~80 lines of "leaked" warnings each time
a server stopped.
"""
from __future__ import annotations

import atexit
import gc


def freeze_loaded_objects() -> int:
    """Collect once, then move every object alive now to the permanent generation (it is
    still freed normally when its references go); returns how many were frozen."""
    gc.collect()
    gc.freeze()
    atexit.unregister(gc.unfreeze)  # once, however often a process freezes
    atexit.register(gc.unfreeze)
    return gc.get_freeze_count()
