#!/usr/bin/env bash
# The one-command GPU check (issue 18): training MFU with padding-free packing, IFD and generation speed-ups,
# kill -9 + resume inside a phase, QLoRA; results in benchmarks/results/gpu_*.json, within 8 minutes.
#
#   benchmarks/gpu_check.sh                      # on the GPU machine, from the repo root, with the bundle carried
#   GPU_CHECK_ALLOW_CPU=1 benchmarks/gpu_check.sh  # CPU dry mode (tiny sizes; the bundle's wheels are optional)
#
# Needs benchmarks/gpu_bundle/ (built elsewhere by benchmarks/gpu_wheelhouse.sh, sent with the device tool's
# carry). Fails before anything costly, with one line and exit status 3/4/5, when there is no CUDA GPU, when torch
# has no CUDA, or when the bundle is missing. Then installs the bundle's wheels (pip --no-index --no-deps) into a
# target dir on PYTHONPATH, so the machine's own torch, transformers, peft and accelerate stay in use, and runs
# benchmarks/gpu_check.py with a budget of GPU_CHECK_BUDGET seconds (default 450) for all its parts.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUNDLE=${GPU_CHECK_BUNDLE:-benchmarks/gpu_bundle}
SITE=${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/phased_ift_gpu_site}
fail() { echo "gpu_check: $2" >&2; exit "$1"; }

if [ "${GPU_CHECK_ALLOW_CPU:-0}" != "1" ]; then
    command -v nvidia-smi >/dev/null 2>&1 || fail 3 "no CUDA GPU: nvidia-smi is not on PATH (set GPU_CHECK_ALLOW_CPU=1 for the CPU dry mode)"
    gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    [ "$gpus" -gt 0 ] || fail 3 "no CUDA GPU: nvidia-smi -L lists none"
    cuda=$("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())' 2>&1 | tail -1) \
        || fail 4 "$PY cannot import torch: $cuda"
    case "$cuda" in
        *" True") ;;
        *) fail 4 "torch has no usable CUDA (torch, CUDA, available: $cuda): install a CUDA build of torch" ;;
    esac
fi
if [ ! -f "$BUNDLE/MANIFEST.json" ] || ! ls "$BUNDLE"/wheels/*.whl >/dev/null 2>&1; then
    [ "${GPU_CHECK_ALLOW_CPU:-0}" = "1" ] && [ -d "$BUNDLE/models" ] || \
        fail 5 "bundle missing: $BUNDLE/MANIFEST.json or its wheels/ not found; run benchmarks/gpu_wheelhouse.sh on a machine with network and carry $BUNDLE"
fi

if [ "${GPU_CHECK_ALLOW_CPU:-0}" != "1" ]; then  # the dry mode runs in the environment it is given
    mkdir -p "$SITE"
    if "$PY" -m pip --version >/dev/null 2>&1; then
        "$PY" -m pip install --quiet --no-index --no-deps --disable-pip-version-check --upgrade --target "$SITE" \
            "$BUNDLE"/wheels/*.whl || fail 6 "pip could not install the bundle's wheels into $SITE"
    else  # no pip: a wheel is a zip of site-packages, so unpacking it onto the path installs it
        "$PY" -c 'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
            "$SITE" "$BUNDLE"/wheels/*.whl || fail 6 "could not unpack the bundle's wheels into $SITE"
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$PY" benchmarks/gpu_check.py --budget "${GPU_CHECK_BUDGET:-450}" --bundle "$BUNDLE" "$@"
