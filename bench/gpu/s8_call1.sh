#!/bin/bash
# Session 8, call 1: the API's connections with TCP_NODELAY (this tree) against the tree before
# (.gpu_base = eda1829: connections without it, so each streamed chunk after a response's first
# waited for the client's delayed ACK), interleaved; the engine in one process first.
# Call 2 was this script with RUNS=local1,triton1,local1 NAME=pipeline_s8c2 (this tree only; the
# server's own TTFT and py-spy over the c16 level added): where the first round's TTFT goes.
#   [RUNS=...] [NAME=...] bash bench/gpu/s8_call1.sh [TIMEOUT_S]   (carry .gpu_assets, .gpu_base)
set -u
LIMIT=${1:-500}
A=$PWD/.gpu_assets
mkdir -p /tmp/bin && xz -dc $A/py-spy.xz > /tmp/bin/py-spy && chmod +x /tmp/bin/py-spy
source bench/gpu/device_setup.sh $A/api.tar.xz $A/pyt.tar.xz $A/numpy1.tar.xz || exit 1
export PATH=/tmp/bin:$PATH
uptime
timeout $LIMIT python -m bench.gpu.pipeline_gpu --out $OUT/${NAME:-pipeline_s8c1}.json \
    --runs "${RUNS:-local1@.gpu_base,local1,triton1@.gpu_base,triton1,local1,local1@.gpu_base}"
echo "pipeline rc=$?"
