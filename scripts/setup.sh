#!/usr/bin/env bash
# Creates .venv (if missing) and installs flowlib with its extras into it.
# CPU torch 2.13.0 is installed first when the venv has no torch, so pip never pulls a
# multi-GB CUDA build; a GPU user who pre-installs their own torch in .venv keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet "torch==2.13.0" \
        || .venv/bin/python -m pip install --quiet "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi
stamp=.venv/.flowlib-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet -e ".[dev,notebooks]"
    .venv/bin/python -m ipykernel install --sys-prefix --name python3 >/dev/null
    touch "$stamp"
fi
