#!/usr/bin/env bash
# Build benchmarks/gpu_bundle/ here (with network) for benchmarks/gpu_check.sh on a GPU machine without one.
#
#   PHASED_IFT_DATA_HOME=../shared/data benchmarks/gpu_wheelhouse.sh      # ~40 MB, about a minute
#
# wheels/   `pip download --no-deps` for CPython 3.12 manylinux x86_64 of the pins in wheels/requirements.txt:
#           trl, datasets and what they need that a box with torch/transformers/peft/accelerate/pyarrow/
#           scikit-learn/matplotlib/rich lacks (at the versions installed here), and bitsandbytes (train.method=
#           qlora) trimmed to its CUDA 12.6+ kernels (43 -> ~19 MiB); gguf/openai/lm-eval are not needed there
# models/   config + tokenizer of Gemma-3-270M and SmolLM2-135M (no weights: random weights are built on the box)
# data/     synthetic stand-ins of random_9k and the vicuna/koala prompts (real record and word counts, random words)
# Then MANIFEST.json (sizes, pins) last. Fails when the bundle would exceed 60 MiB (the device tool carries 64).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || { echo "gpu_wheelhouse.sh: no $PY; run scripts/install.sh first or set PYTHON=..." >&2; exit 1; }
BUNDLE=benchmarks/gpu_bundle
rm -rf "$BUNDLE.tmp" && mkdir -p "$BUNDLE.tmp/wheels"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" benchmarks/gpu_bundle.py pins > "$BUNDLE.tmp/wheels/requirements.txt"
echo "pins: $(tr '\n' ' ' < "$BUNDLE.tmp/wheels/requirements.txt")"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$BUNDLE.tmp/wheels" -r "$BUNDLE.tmp/wheels/requirements.txt"
for w in "$BUNDLE.tmp"/wheels/bitsandbytes-*.whl; do "$PY" benchmarks/gpu_bundle.py trim "$w"; done
"$PY" benchmarks/gpu_bundle.py models "$BUNDLE.tmp"
"$PY" benchmarks/gpu_bundle.py manifest "$BUNDLE.tmp"
bytes=$(du -sb "$BUNDLE.tmp" | cut -f1)
if [ "$bytes" -gt $((60 * 1024 * 1024)) ]; then
    echo "gpu_wheelhouse: the bundle is $((bytes / 1048576)) MiB, over 60 MiB: the device tool carries 64 MiB in all" >&2
    exit 1
fi
rm -rf "$BUNDLE" && mv "$BUNDLE.tmp" "$BUNDLE"
echo "gpu_wheelhouse: $BUNDLE is $((bytes / 1048576)) MiB; carry it with the device tool: carry=[\"$BUNDLE\"]"
