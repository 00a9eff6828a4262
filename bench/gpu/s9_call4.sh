#!/bin/bash
# Session 9, call 4: eager products at padded row counts, each count run once at load
# (engine/eager_warmup.py). The prefill sweep of call 3 again (first call of a new token
# count against the same count again), the GPU tests of the engine's CUDA paths, then the
# pipeline against the tree before (.gpu_base = ca144b0), interleaved.
#   bash bench/gpu/s9_call4.sh [TIMEOUT_S]   (carry .gpu_assets, .gpu_base)
set -u
LIMIT=${1:-500}
A=$PWD/.gpu_assets
source bench/gpu/device_setup.sh $A/api.tar.xz $A/pyt.tar.xz $A/numpy1.tar.xz || exit 1
uptime
timeout 120 python -m bench.gpu.prefill_probe --in-process-only --out $OUT/prefill_s9c4.json \
    2>&1 | grep -v -i warn | cut -c1-200
timeout 120 python -m pytest -q -x tests/engine/test_eager_padding.py tests/engine/test_stage_cuda.py \
    tests/engine/test_fused_paths.py 2>&1 | tail -4
timeout $LIMIT python -m bench.gpu.pipeline_gpu --out $OUT/${NAME:-pipeline_s9c4}.json --no-in-process \
    --runs "${RUNS:-local1@.gpu_base,local1,local1@.gpu_base,local1}"
echo "pipeline rc=$?"
