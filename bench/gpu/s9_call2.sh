#!/bin/bash
# Session 9, call 2: the servers' loaded objects frozen out of the full GC passes (this tree)
# against the tree before (.gpu_base = ca144b0), interleaved; every full pass of every master
# and worker logged (bench/serving/gc_probe: "ROLE PID UNIX_S MS", runs in start order).
#   bash bench/gpu/s9_call2.sh [TIMEOUT_S]   (carry .gpu_assets, .gpu_base)
set -u
LIMIT=${1:-500}
A=$PWD/.gpu_assets
source bench/gpu/device_setup.sh $A/api.tar.xz $A/pyt.tar.xz $A/numpy1.tar.xz || exit 1
export GC_PAUSE_LOG=$OUT/gc_passes.log PYTHONPATH=$PWD/bench/serving/gc_probe
uptime
timeout $LIMIT python -m bench.gpu.pipeline_gpu --out $OUT/${NAME:-pipeline_s9c2}.json --no-in-process \
    --runs "${RUNS:-local1@.gpu_base,local1,local1@.gpu_base,local1}"
echo "pipeline rc=$?"
