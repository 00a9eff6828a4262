"""The soak of issue 14: `duet serve` (its tiny default checkpoint, the Triton executor as
deployed) under `duet load` — 64 streaming clients for 10 minutes; zero 5xx, every stream
complete, each process's resident memory flat after warm-up (< 5%), KV back to zero.

    nice python -m bench.load.soak [--clients 64] [--minutes 10]

writes bench/load/soak-DATE.json, .md and .png (duet load's files) and prints the table. The
servers run under the same `nice` as this script, so a shared machine keeps its other work.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
READY_S = 600.0


def start_serve(log_path: Path) -> tuple[subprocess.Popen, str]:
    log = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "duet.cli", "serve", "--port", "0"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        found = re.search(r"duet serve: ready at (http://\S+)", log_path.read_text())
        if found:
            return proc, found[1]
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"duet serve did not get ready:\n{log_path.read_text()[-3000:]}")


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.load.soak", description=__doc__)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--out", default=str(HERE / f"soak-{time.strftime('%Y-%m-%d')}"))
    args = p.parse_args()
    serve, url = start_serve(Path(args.out).with_suffix(".serve.log"))
    try:
        return subprocess.run(
            [sys.executable, "-m", "duet.cli", "load", "--url", url, "--clients",
             str(args.clients), "--minutes", str(args.minutes), "--pid", str(serve.pid),
             "--out", args.out]).returncode
    finally:
        serve.terminate()
        serve.wait(120)


if __name__ == "__main__":
    sys.exit(main())
