#!/bin/bash
# One device call: the GPU tests of the graphs, then the pipeline from .gpu_base (before:
# decode-only graphs, uvicorn on h11) and from .gpu_this (a copy of this tree: prompts joining
# decodes graphed a row a token, and httptools on PYTHONPATH through .gpu_this/.python).
#   [RUNS=...] bash bench/gpu/s5_call3.sh [TIMEOUT_S]
set -u
LIMIT=${1:-420}
A=$PWD/.gpu_assets
mkdir -p /tmp/bin /tmp/httptools && xz -dc $A/py-spy.xz > /tmp/bin/py-spy && chmod +x /tmp/bin/py-spy
tar -xJf $A/httptools.tar.xz -C /tmp/httptools
source bench/gpu/device_setup.sh $A/api.tar.xz $A/pyt.tar.xz $A/numpy1.tar.xz || exit 1
export PATH=/tmp/bin:$PATH
printf '#!/bin/sh\nPYTHONPATH=/tmp/httptools exec %s "$@"\n' "$(command -v python)" > .gpu_this/.python
chmod +x .gpu_this/.python
.gpu_this/.python -c 'import httptools, uvicorn; print("httptools", httptools.__version__)'
timeout 120 python -m pytest -q -x tests/engine/test_decode_graphs.py tests/worker/test_tail_cuda.py 2>&1 | tail -3
uptime
timeout $LIMIT python -m bench.gpu.pipeline_gpu --out $OUT/pipeline_call3.json --no-in-process \
    --runs "${RUNS:-local1@.gpu_base,local1@.gpu_this,triton1@.gpu_this}" --concurrency 1,64
echo "pipeline rc=$?"
