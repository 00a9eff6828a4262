#!/bin/bash
# Session 9, call 1: where a burst's time to first token goes (bench/gpu/prefill_probe.py).
#   bash bench/gpu/s9_call1.sh [TIMEOUT_S]   (carry .gpu_assets)
set -u
LIMIT=${1:-500}
A=$PWD/.gpu_assets
source bench/gpu/device_setup.sh $A/api.tar.xz $A/pyt.tar.xz $A/numpy1.tar.xz || exit 1
uptime
timeout $LIMIT python -m bench.gpu.prefill_probe --out $OUT/${NAME:-prefill_s9c1}.json
echo "probe rc=$?"
