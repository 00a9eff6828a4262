#!/bin/bash
# Session 7, call 1: what one GPU shared by two processes costs, and whether CUDA MPS
# (bench/gpu/mps.py) takes it away: the hand-off without and with MPS (gpu_handoff.py), then
# the pipeline at concurrency 1 and 64: .gpu_base (the tree before session 6's mixed-step
# attention, d6a5315) and this tree, then this tree under MPS (1 and 2 micro-batches in flight,
# and the triton executor), and triton without MPS last.
#   [RUNS=...] bash bench/gpu/s7_call1.sh [TIMEOUT_S]
set -u
LIMIT=${1:-470}
A=$PWD/.gpu_assets
mkdir -p /tmp/bin && xz -dc $A/py-spy.xz > /tmp/bin/py-spy && chmod +x /tmp/bin/py-spy
source bench/gpu/device_setup.sh $A/api.tar.xz $A/pyt.tar.xz $A/numpy1.tar.xz || exit 1
export PATH=/tmp/bin:$PATH:/usr/local/nvidia/bin
command -v nvidia-cuda-mps-control || ls /usr/local/nvidia/bin /usr/bin | grep -i nvidia
nvidia-smi --query-gpu=name,compute_mode,memory.used --format=csv,noheader
python -c 'import httptools, uvicorn; print("httptools", httptools.__version__)'
uptime
timeout 60 python -m bench.gpu.gpu_handoff --out $OUT/handoff.json | tail -4
timeout 90 python -m bench.gpu.mps python -m bench.gpu.gpu_handoff --out $OUT/handoff_mps.json \
    | tail -4
timeout $LIMIT python -m bench.gpu.pipeline_gpu --out $OUT/pipeline_s7c1.json --no-in-process \
    --concurrency 1,64 \
    --runs "${RUNS:-local1@.gpu_base,local1,local1+mps,local2+mps,triton1+mps,triton1}"
echo "pipeline rc=$?"
