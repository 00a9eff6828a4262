"""Child processes a duet process starts (the worker, tritonserver): the ports they get, and
a preexec hook that makes them die with their parent."""
from __future__ import annotations

import ctypes
import signal
import socket

PR_SET_PDEATHSIG = 1  # prctl option: signal the child when its parent thread exits


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the parent dies, even by SIGKILL (Linux;
    elsewhere a no-op, and the parent's own cleanup is all there is)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
