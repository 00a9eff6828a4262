#!/bin/bash
# Session 7, call 3 (the results call): the engine in one process, then the pipeline at
# concurrency 1, 16 and 64 with this tree (step_token_budget 2048 by default) beside .gpu_base
# (the same code before that default: 512), twice each and interleaved, then `triton` and two
# micro-batches in flight with this tree.
#   [RUNS=...] bash bench/gpu/s7_call3.sh [TIMEOUT_S]
set -u
LIMIT=${1:-480}
A=$PWD/.gpu_assets
mkdir -p /tmp/bin && xz -dc $A/py-spy.xz > /tmp/bin/py-spy && chmod +x /tmp/bin/py-spy
source bench/gpu/device_setup.sh $A/api.tar.xz $A/pyt.tar.xz $A/numpy1.tar.xz || exit 1
export PATH=/tmp/bin:$PATH
uptime
timeout $LIMIT python -m bench.gpu.pipeline_gpu --out $OUT/pipeline.json \
    --runs "${RUNS:-local1@.gpu_base,local1,triton1,local2,local1@.gpu_base,local1}"
echo "pipeline rc=$?"
