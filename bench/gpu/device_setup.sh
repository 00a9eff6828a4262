#!/bin/bash
# On a bare GPU machine (Python 3.12 with torch, no API packages, no Triton): a virtualenv over
# the system's packages holding the carried wheels, the trimmed nvidia-pytriton files
# (tritonserver, the Python backend and its 3.12 stub, their libraries: see notes.md) and this
# checkout. The Python-backend stub ignores PYTHONPATH but finds the virtualenv first on PATH
# (worker/triton_repo.py), so the tail model inside Triton imports duet from here too.
#   source bench/gpu/device_setup.sh API PYTRITON_TAR_XZ [EXTRA]
# API and EXTRA: a folder of wheels, or a .tar.xz of their unpacked files (fetch_assets.sh
# builds .gpu_assets/api.tar.xz and numpy1.tar.xz: xz packs them in ~40% less of the 64 MiB).
WHEELS=$1 PYTRITON=$2 EXTRA=${3:-} VENV=${DUET_VENV:-/tmp/duet-venv}
# python3 may itself be a virtualenv (/opt/torch/.venv, holding torch and numpy); a venv made
# from it sees only the base interpreter's packages, so its site-packages go in by a .pth.
BASE_SITE=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
python3 -m venv --without-pip --system-site-packages $VENV || return 1
SITE=$($VENV/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$BASE_SITE" > "$SITE/base_site.pth"
unpack() {  # a .tar.xz of unpacked wheels, or a folder of wheels -> $SITE
    if [ -f "$1" ]; then tar -xJf "$1" -C "$SITE"; else
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$1"/*.whl; fi
}
unpack "$WHEELS" || return 1
# EXTRA last: its numpy 1.26.4 goes over the machine's numpy 2 for the Triton stub.
if [ -n "$EXTRA" ]; then unpack "$EXTRA" || return 1; fi
tar -xJf "$PYTRITON" -C "$SITE" || return 1
echo "$PWD" > "$SITE/duet_checkout.pth"  # what an editable install would write
export PATH=$VENV/bin:$SITE/bin:$PATH PYTHONUNBUFFERED=1
python -c 'import importlib.util as u, duet, fastapi, openai, tritonclient, torch, numpy; assert u.find_spec("pytriton"); print("device setup ok")'
