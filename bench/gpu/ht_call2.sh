#!/bin/bash
# ht's second device call (issue 11): the `triton` executor with the tail model's HIDDEN input
# as a DLPack torch tensor (../.gpu_ht_before: the tree before) against a numpy view (this
# tree), c1 and c64 only, no in-process engine (the first call, ht_call.sh, has it).
#   OUT=DIR bash bench/gpu/ht_call2.sh API_TAR PYTRITON_TAR NUMPY1_TAR [BUDGET_S]
BUDGET_S=${4:-200}
source bench/gpu/device_setup.sh "$1" "$2" "$3" || exit 1
echo "== setup ${SECONDS}s"
timeout $((BUDGET_S - SECONDS)) python -m bench.gpu.pipeline_gpu --out "$OUT/pipeline_ht2.json" \
    --runs "triton1@../.gpu_ht_before,triton1" --concurrency 1,64 --no-in-process
echo "== pipeline rc $? ${SECONDS}s"
