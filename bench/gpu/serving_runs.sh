#!/bin/bash
# The GPU serving runs of issues 11 and 12 in one device call, each writing its JSON under
# $OUT as soon as it ends: (cure) which managed-tritonserver setting lets the Python-backend
# stub read its inputs here (bench/gpu/triton_cure.py, stops at the first that works);
# (pipeline) the two-stage pipeline with the triton executor (if cured) and the local one
# beside the in-process engine (bench/gpu/pipeline_gpu.py); (fp8) FP8 greedy tokens through
# `duet serve`, native vs dequantize (bench/fp8/serve_greedy.py, triton executor if cured).
# Each part gets at most what is left of BUDGET_S.
#   OUT=DIR [PARTS="cure pipeline fp8"] bash bench/gpu/serving_runs.sh WHEEL_DIR \
#       PYTRITON_TAR_XZ EXTRA_WHEEL_DIR [BUDGET_S]
BUDGET_S=${4:-560} PARTS=${PARTS:-cure pipeline fp8}
source bench/gpu/device_setup.sh "$1" "$2" "$3" || exit 1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python -c 'import numpy, torch; print("numpy", numpy.__version__, "torch", torch.__version__)'
EXECUTOR=local RUNS=local1
if [[ $PARTS == *cure* ]]; then
    timeout 200 python -m bench.gpu.triton_cure --out "$OUT/triton_cure.json" \
        --env-out "$OUT/cure.env"
    if [ -s "$OUT/cure.env" ]; then
        source "$OUT/cure.env"; EXECUTOR=triton RUNS=triton1,local1
    fi
fi
echo "== executor $EXECUTOR, runs $RUNS, ${SECONDS}s in"
if [[ $PARTS == *pipeline* ]]; then
    timeout $((BUDGET_S - SECONDS)) python -m bench.gpu.pipeline_gpu \
        --out "$OUT/pipeline.json" --runs $RUNS
    echo "== pipeline done (rc $?), ${SECONDS}s in"
fi
if [[ $PARTS == *fp8* ]] && (( BUDGET_S - SECONDS > 60 )); then
    timeout $((BUDGET_S - SECONDS)) python -m bench.fp8.serve_greedy \
        --out "$OUT/serve_greedy.json" --executor $EXECUTOR
    echo "== fp8 serve done, ${SECONDS}s in"
fi
