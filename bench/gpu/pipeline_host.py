"""The host-work changes (bench/gpu/host_overhead.md) on the GPU: the two-stage pipeline of
pipeline_gpu.py (7B shape, 14 | 14 on one GPU, `local` executor, 1 micro-batch in flight,
concurrency 1, 16 and 64 through the API) run from several source trees in the same run (a
base, this checkout, variants with one change taken out), so the ratios hold on one machine.

    python -m bench.gpu.pipeline_host --trees base=../base,this=. --out pipeline_host.json
        [--concurrency 64] [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from bench.gpu import pipeline_gpu as gpu
from bench.gpu import pipeline_load as load


class TreeGpuStack(gpu.GpuStack):
    """GpuStack whose processes run the source tree `tree` (pipeline_stack.Stack starts them
    in `cwd`, and `python -m` puts it first on the module path); None: this checkout."""

    def __init__(self, tmp: Path, model: Path, tree: Path | None, **where):
        super().__init__(tmp, model, "local", 1, tree=tree, **where)


def run_tree(tmp: Path, model: Path, tree: Path | None, levels, **where) -> dict:
    stack = None
    started = time.perf_counter()
    try:
        stack = TreeGpuStack(tmp, model, tree, **where)
        return {"start_s": time.perf_counter() - started} | gpu.drive(stack, model.name, levels,
                                                                     False)
    except Exception as e:  # record it; the other tree may still run
        return {"error": f"{type(e).__name__}: {str(e)[-3000:]}"}
    finally:
        if stack is not None:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", required=True, help="name=path,...; '.' is this checkout")
    parser.add_argument("--out", required=True)
    parser.add_argument("--concurrency", default="", help="only these levels, e.g. 64")
    parser.add_argument("--dry-run", action="store_true", help="small checkpoint, this CPU")
    args = parser.parse_args()
    dry = gpu.DRY if args.dry_run else None
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "device": "cpu (dry run)" if dry else torch.cuda.get_device_name(0),
               "split": f"{gpu.SPLIT} | {gpu.SPLIT}", "executor": "local",
               "max_inflight_batches": 1, "prompt_tokens": load.PROMPT_TOKENS,
               "output_tokens": load.OUTPUT_TOKENS, "cpu_cores": os.cpu_count(), "runs": {}}
    levels = gpu.LEVELS if not dry else dry["levels"][:1]
    if args.concurrency:
        wanted = {int(c) for c in args.concurrency.split(",")}
        levels = tuple(lv for lv in levels if lv[0] in wanted)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = (gpu.dry_checkpoint(Path(tmp)) if dry
                 else gpu.write_checkpoint(Path(tmp) / "qwen7b"))
        results["checkpoint_write_s"] = time.perf_counter() - t0
        where = {k: dry[k] for k in ("device", "dtype", "split")} if dry else {}
        for item in args.trees.split(","):
            name, _, path = item.partition("=")
            tree = None if path in ("", ".") else Path(path).resolve()
            results["runs"][name] = run_tree(Path(tmp), model, tree, levels, **where)
            results["runs"][name]["tree"] = str(tree or Path.cwd())
            Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
