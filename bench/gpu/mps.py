"""CUDA MPS (Multi-Process Service) for processes that share one GPU.

Without MPS a GPU runs one process's context at a time and switches between them
(`gpu_handoff.py` measured 192 µs a hand-off on the H200); under MPS the processes' kernels go
through one server context, so the head's and the tail's kernels can run side by side and a
turn pays no switch. That is the set-up of a one-GPU benchmark of the two-stage pipeline, and
of host B after a failover (the standby API's head beside the worker's tail).

The control daemon is a user-space process: it changes none of the card's settings (compute
mode, clocks, MIG). Its pipe and log folders are private to the run, and every process started
while it runs connects to it through the environment it inherits.

    python -m bench.gpu.mps CMD ARGS...   (CMD under a daemon started for it, then stopped)
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

CONTROL = "nvidia-cuda-mps-control"


@contextmanager
def mps_daemon(folder: Path):
    """An MPS control daemon for the processes started inside (they inherit its folders)."""
    exe = shutil.which(CONTROL)
    if exe is None:
        raise RuntimeError(f"{CONTROL} is not on PATH: this machine's driver lacks MPS")
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"),
           "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}
    saved = {k: os.environ.get(k) for k in env}
    for path in env.values():
        Path(path).mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    try:
        subprocess.run([exe, "-d"], check=True, timeout=30)
        yield
    finally:
        subprocess.run([exe], input=b"quit\n", timeout=30, check=False)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__.splitlines()[-1].strip(), file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory() as tmp, mps_daemon(Path(tmp)):
            return subprocess.run(sys.argv[1:], check=False).returncode
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        print(f"mps: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
