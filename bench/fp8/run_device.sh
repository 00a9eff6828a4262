#!/usr/bin/env bash
# On the lent GPU machine, from the repository root: the benchmark, then the GPU-only tests,
# then (PROBE=1) the batch-1 profile of bench/fp8/probe_small_m.py on the checkpoint written.
#   OUT=/some/dir bash bench/fp8/run_device.sh [--layers N] [--skip-kernel-speed] [--reuse JSON]
# Budget: Triton compiles every new shape x config on first use (~8 s a test shape on the
# H200, 2026-12-02: the 41 CUDA tests alone took > 330 s), so the benchmark runs first and
# writes results.json after each part; TESTS_K narrows the tests (pytest -k), TESTS_S bounds them.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv,noheader
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)'
python3 -m bench.fp8.bench_fp8 --out "$OUT/results.json" --dir /tmp/v3fp8 "$@" 2>&1 | tee "$OUT/bench.log" | grep -v Warn | tail -30
timeout "${TESTS_S:-600}" python3 -m pytest -q -p no:cacheprovider tests/engine/test_fp8_native_cuda.py \
    ${TESTS_K:+-k "$TESTS_K"} 2>&1 | tee "$OUT/pytest.log" | tail -5
if [ "${PROBE:-0}" = 1 ]; then
    timeout "${PROBE_S:-120}" python3 -m bench.fp8.probe_small_m --out "$OUT/probe.json" --dir /tmp/v3fp8 \
        --skip-write --modes native > "$OUT/probe.log" 2>&1; tail -3 "$OUT/probe.log"
fi
