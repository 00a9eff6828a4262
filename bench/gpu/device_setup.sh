#!/bin/bash
# On a bare GPU machine (Python 3.12 with torch, no API packages, no Triton): a virtualenv over
# the system's packages holding the carried wheels, the trimmed nvidia-pytriton files
# (tritonserver, the Python backend and its 3.12 stub, their libraries: see notes.md) and this
# checkout. The Python-backend stub ignores PYTHONPATH but finds the virtualenv first on PATH
# (worker/triton_repo.py), so the tail model inside Triton imports duet from here too.
#   source bench/gpu/device_setup.sh WHEEL_DIR PYTRITON_TAR_XZ [EXTRA_WHEEL_DIR]
WHEELS=$1 PYTRITON=$2 EXTRA=${3:-} VENV=${DUET_VENV:-/tmp/duet-venv}
# python3 may itself be a virtualenv (/opt/torch/.venv, holding torch and numpy); a venv made
# from it sees only the base interpreter's packages, so its site-packages go in by a .pth.
BASE_SITE=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
python3 -m venv --without-pip --system-site-packages $VENV || return 1
SITE=$($VENV/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$BASE_SITE" > "$SITE/base_site.pth"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" "$WHEELS"/*.whl ${EXTRA:+"$EXTRA"/*.whl} || return 1
tar -xJf "$PYTRITON" -C "$SITE" || return 1
echo "$PWD" > "$SITE/duet_checkout.pth"  # what an editable install would write
export PATH=$VENV/bin:$SITE/bin:$PATH PYTHONUNBUFFERED=1
python -c 'import importlib.util as u, duet, fastapi, openai, tritonclient, torch, numpy; assert u.find_spec("pytriton"); print("device setup ok")'
