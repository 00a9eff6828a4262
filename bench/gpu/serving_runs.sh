#!/bin/bash
# The GPU serving runs of issues 11 and 12 in one device call, each writing its JSON under
# $OUT as soon as it ends: (1) which managed-tritonserver setting lets the Python-backend
# stub read its inputs here (bench/gpu/triton_cure.py, stops at the first that works);
# (2) FP8 greedy tokens through `duet serve`, native vs dequantize (bench/fp8/serve_greedy.py,
# on the triton executor with that setting, else local); (3) the two-stage pipeline with the
# triton executor (if cured) and the local one beside the in-process engine
# (bench/gpu/pipeline_gpu.py), in the time left of BUDGET_S.
#   OUT=DIR bash bench/gpu/serving_runs.sh WHEEL_DIR PYTRITON_TAR_XZ EXTRA_WHEEL_DIR [BUDGET_S]
BUDGET_S=${4:-560}
source bench/gpu/device_setup.sh "$1" "$2" "$3" || exit 1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
df -h /dev/shm
timeout 200 python -m bench.gpu.triton_cure --out "$OUT/triton_cure.json" \
    --env-out "$OUT/cure.env"
EXECUTOR=local RUNS=local1
if [ -s "$OUT/cure.env" ]; then
    source "$OUT/cure.env"; EXECUTOR=triton RUNS=triton1,local1
fi
echo "== cure: executor $EXECUTOR, runs $RUNS, ${SECONDS}s in"
timeout 170 python -m bench.fp8.serve_greedy --out "$OUT/serve_greedy.json" --executor $EXECUTOR
echo "== fp8 serve done, ${SECONDS}s in"
timeout $((BUDGET_S - SECONDS)) python -m bench.gpu.pipeline_gpu --out "$OUT/pipeline.json" \
    --runs $RUNS
echo "== pipeline done (rc $?), ${SECONDS}s in"
