"""Full garbage-collector passes in the serving processes, with and without the loaded
objects frozen (runtime/gc_freeze.py), side by side in one run.

The pipeline benchmark's CPU stack (bench/gpu/pipeline_gpu.py --dry-run: worker and master
processes, 8-layer checkpoint, split 4 | 4) takes bursts of 64 streamed completions started
together (16 tokens each); a sitecustomize (gc_probe/) logs every pass over the oldest
generation in both servers, and can turn gc.freeze off: the "before". Runs alternate.

    python -m bench.serving.gc_pauses [--out bench/serving/gc_pauses.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from bench.gpu import pipeline_load as load
from bench.gpu.pipeline_gpu import DRY, GpuStack, dry_checkpoint

PROBE = Path(__file__).parent / "gc_probe"
BURSTS, USERS, TOKENS = 8, 64, 16


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(tmp: Path, model: Path, freeze: bool, serial: int) -> dict:
    log = tmp / f"gc-{serial}.log"
    os.environ.update(GC_PAUSE_LOG=str(log), GC_PAUSE_NO_FREEZE="0" if freeze else "1",
                      PYTHONPATH=f"{PROBE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    stack = GpuStack(tmp, model, "local", 1, **{k: DRY[k] for k in ("device", "dtype", "split")})
    try:
        load.warm_up(stack.url, model.name)
        cpu0, t0 = cpu_s(stack.pids["master"]), time.time()
        ttft = sorted(t for b in range(BURSTS)
                      for t in load.burst(stack.url, model.name, USERS, 40000 + 100 * b, TOKENS))
        t1 = time.time()
        master_cpu = cpu_s(stack.pids["master"]) - cpu0
    finally:
        stack.stop()
    for key in ("GC_PAUSE_LOG", "GC_PAUSE_NO_FREEZE", "PYTHONPATH"):
        os.environ.pop(key)
    pauses: dict[str, list[float]] = {"master": [], "worker": []}
    for line in log.read_text().splitlines():
        role, _, at, ms = line.split()
        if t0 <= float(at) <= t1:
            pauses[role].append(float(ms))
    return {"freeze": freeze, "wall_s": t1 - t0,
            "ttft_ms_p50": ttft[len(ttft) // 2] * 1e3, "ttft_ms_p99": ttft[-len(ttft) // 100] * 1e3,
            "master_cpu_ms_per_request": master_cpu / (BURSTS * USERS) * 1e3,
            **{f"{role}_full_passes": len(p) for role, p in pauses.items()},
            **{f"{role}_pause_ms_max": max(p, default=0.0) for role, p in pauses.items()},
            **{f"{role}_pause_ms_total": sum(p) for role, p in pauses.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "bursts": BURSTS, "users": USERS, "output_tokens": TOKENS, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        model = dry_checkpoint(Path(tmp))
        for serial, freeze in enumerate((False, True, False, True)):
            result["runs"].append(one_run(Path(tmp), model, freeze, serial))
            print(json.dumps(result["runs"][-1]), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
