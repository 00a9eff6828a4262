#!/bin/bash
# The session-5 results call: the GPU hand-off between two processes (gpu_handoff.py), then
# the whole pipeline benchmark from this tree (engine in one process; local1, local2, triton1 at
# concurrency 1, 16 and 64; TTFT of a 2,000-token prompt; py-spy at c1 and c64).
#   bash bench/gpu/s5_final.sh [RUNS] [TIMEOUT_S]
set -u
RUNS=${1:-local1,local2,triton1} LIMIT=${2:-500}
A=$PWD/.gpu_assets
mkdir -p /tmp/bin && xz -dc $A/py-spy.xz > /tmp/bin/py-spy && chmod +x /tmp/bin/py-spy
source bench/gpu/device_setup.sh $A/api.tar.xz $A/pyt.tar.xz $A/numpy1.tar.xz || exit 1
export PATH=/tmp/bin:$PATH
nvidia-smi --query-gpu=name,clocks.max.sm,memory.used --format=csv,noheader
uptime
timeout 60 python -m bench.gpu.gpu_handoff --out $OUT/gpu_handoff.json
timeout $LIMIT python -m bench.gpu.pipeline_gpu --out $OUT/pipeline.json --runs "$RUNS"
echo "pipeline rc=$?"
