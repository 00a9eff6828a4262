#!/bin/bash
# One device call: the pipeline from the tree in .gpu_base (the "before") and from this tree,
# each in its own environment, interleaved (before, this, this, before), py-spy at c1 and c64.
#   bash bench/gpu/s5_call.sh OUT_NAME RUNS CONCURRENCY [TIMEOUT_S]
# Needs .gpu_assets (fetch_assets.sh; py-spy.xz: the py-spy wheel's binary, xz) and .gpu_base
# (git archive BASE | tar -x -C .gpu_base); carry both.
set -u
NAME=$1 RUNS=$2 LEVELS=$3 LIMIT=${4:-480}
A=$PWD/.gpu_assets
mkdir -p /tmp/bin && xz -dc $A/py-spy.xz > /tmp/bin/py-spy && chmod +x /tmp/bin/py-spy
(cd .gpu_base && DUET_VENV=/tmp/venv-base source bench/gpu/device_setup.sh $A/api.tar.xz \
    $A/pyt.tar.xz $A/numpy1.tar.xz) &&  # a script, not a link: a venv is found from its path
    printf '#!/bin/sh\nexec /tmp/venv-base/bin/python "$@"\n' > .gpu_base/.python &&
    chmod +x .gpu_base/.python
source bench/gpu/device_setup.sh $A/api.tar.xz $A/pyt.tar.xz $A/numpy1.tar.xz || exit 1
export PATH=/tmp/bin:$PATH
python -m pytest -q -x tests/worker/test_tail_cuda.py 2>&1 | tail -2
nvidia-smi --query-gpu=name,clocks.max.sm,memory.used --format=csv,noheader
uptime
timeout $LIMIT python -m bench.gpu.pipeline_gpu --out $OUT/$NAME.json --runs "$RUNS" \
    --concurrency "$LEVELS" --no-in-process
echo "pipeline rc=$?"
