#!/bin/bash
# One device call (hh2, issue 11): the pipeline's host work, main's tree (base/) vs this
# checkout side by side at c1 and c64 (bench/gpu/pipeline_host.py), then the V3 rows of
# decode_gpu at batch 1. Each part under its own timeout; JSON under $OUT as each part ends.
#   OUT=DIR bash bench/gpu/hh2_call.sh WHEEL_DIR PYTRITON_TAR_XZ [BUDGET_S]
BUDGET_S=${3:-220}
source bench/gpu/device_setup.sh "$1" "$2" || exit 1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
echo "== setup ${SECONDS}s"
timeout $((BUDGET_S - SECONDS - 45)) python -m bench.gpu.pipeline_host \
    --trees base=base,this=. --concurrency 1,64 --out "$OUT/pipeline_host_hh2.json"
echo "== pipeline_host rc $? ${SECONDS}s"
if (( BUDGET_S - SECONDS > 25 )); then
    timeout $((BUDGET_S - SECONDS)) python -m bench.gpu.decode_gpu --shapes v3 --batches 1 \
        --no-transformers --out "$OUT/decode_v3_hh2.json"
    echo "== decode_gpu v3 rc $? ${SECONDS}s"
fi
