#!/bin/bash
# One device call (ht, issue 11): the two-stage pipeline with the `triton` executor before
# (../.gpu_ht_before: the tree before the relay change) and after (this tree), and `local`,
# beside the in-process engine (bench/gpu/pipeline_gpu.py); then the relay shapes on this
# host's CPU (bench/worker/triton_relay.py: local, triton after/before, direct into Triton).
# Each part under its own timeout; JSON under $OUT as each part ends.
#   OUT=DIR bash bench/gpu/ht_call.sh API_TAR PYTRITON_TAR NUMPY1_TAR [BUDGET_S]
BUDGET_S=${4:-460}
source bench/gpu/device_setup.sh "$1" "$2" "$3" || exit 1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
echo "== setup ${SECONDS}s"
timeout $((BUDGET_S - SECONDS - 50)) python -m bench.gpu.pipeline_gpu \
    --out "$OUT/pipeline_ht.json" \
    --runs "triton1@../.gpu_ht_before,triton1,local1"
echo "== pipeline rc $? ${SECONDS}s"
if (( BUDGET_S - SECONDS > 30 )); then
    timeout $((BUDGET_S - SECONDS)) python -m bench.worker.triton_relay --steps 200 --rounds 4 \
        --batches 1 --before ../.gpu_ht_before --out "$OUT/triton_relay_h200.json"
    echo "== triton_relay rc $? ${SECONDS}s"
fi
