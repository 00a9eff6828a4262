#!/usr/bin/env bash
# On the lent GPU machine, from the repository root: the GPU-only tests, then the benchmark.
#   OUT=/some/dir bash bench/fp8/run_device.sh
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader
python3 -m pytest -q -p no:cacheprovider tests/engine/test_fp8_native_cuda.py 2>&1 | tail -25
python3 -m bench.fp8.bench_fp8 --out "$OUT/results.json" --dir /tmp/v3fp8 "$@" 2>&1 | tee "$OUT/bench.log"
