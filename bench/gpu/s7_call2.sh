#!/bin/bash
# Session 7, call 2: the master's step_token_budget (new tokens a step may carry, prompt chunks
# included; default 512) against 2048 and 1024: a 2,000-token prompt crosses the pipeline in
# 4 hops at 512 and in one at 2048, and 64 prompts of 32 tokens arriving together are 2,048
# tokens. The engine in one process first (the ratios' reference), concurrency 1, 16 and 64.
# Call 3 (runs/s7_call3_budget.json) was this script with
#   RUNS=local1@.gpu_base,local1,triton1,local2,local1@.gpu_base,local1 and --out pipeline.json,
#   .gpu_base holding the tree at 512 and this tree's default set to 2048 (not landed).
#   [RUNS=...] bash bench/gpu/s7_call2.sh [TIMEOUT_S]
set -u
LIMIT=${1:-480}
A=$PWD/.gpu_assets
mkdir -p /tmp/bin && xz -dc $A/py-spy.xz > /tmp/bin/py-spy && chmod +x /tmp/bin/py-spy
source bench/gpu/device_setup.sh $A/api.tar.xz $A/pyt.tar.xz $A/numpy1.tar.xz || exit 1
export PATH=/tmp/bin:$PATH
uptime
timeout $LIMIT python -m bench.gpu.pipeline_gpu --out $OUT/pipeline_s7c2.json \
    --runs "${RUNS:-local1,local1+b2048,triton1+b2048,triton1,local2+b2048,local1+b1024}"
echo "pipeline rc=$?"
