#!/bin/bash
# Session 9, call 6: the load-time warm-up with a mixed eager step (this tree) against the
# warm-up of single-sequence steps only (.gpu_base = 88180ff), interleaved, c16 and c64:
# does the first round of c16 (0.5 s to the first token) still wait?
#   bash bench/gpu/s9_call6.sh [TIMEOUT_S]   (carry .gpu_assets, .gpu_base)
set -u
LIMIT=${1:-300}
A=$PWD/.gpu_assets
source bench/gpu/device_setup.sh $A/api.tar.xz $A/pyt.tar.xz $A/numpy1.tar.xz > /dev/null || exit 1
timeout $LIMIT python -m bench.gpu.pipeline_gpu --out $OUT/${NAME:-pipeline_s9c6}.json \
    --no-in-process --concurrency 16,64 \
    --runs "${RUNS:-local1@.gpu_base,local1,local1@.gpu_base,local1}"
echo "pipeline rc=$?"
