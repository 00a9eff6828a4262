#!/bin/bash
# One device call: the pipeline from this tree without and with httptools in the master's
# environment (uvicorn takes it when installed), as `local1` and `local1@.gpu_this` (a copy of
# this tree whose .python puts httptools on PYTHONPATH), then `triton1@.gpu_this`.
#   bash bench/gpu/s5_http.sh [TIMEOUT_S]
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
uptime
timeout $LIMIT python -m bench.gpu.pipeline_gpu --out $OUT/pipeline_http.json --no-in-process \
    --runs local1,local1@.gpu_this,triton1@.gpu_this --concurrency 1,64
echo "pipeline rc=$?"
