#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install colsmol into it.
#   COLSMOL_VENV   where the venv lives (default: .venv in the repo)
#   COLSMOL_EXTRAS extras to install, e.g. "test" (default: none)
# Versions are pinned by constraints.txt, the set this project is tested with
# (torch 2.9.1 + torchvision 0.24.1: colpali-engine needs torch<2.14, and that pair imports together).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "colsmol needs Python 3.11 or newer")'

VENV=${COLSMOL_VENV:-.venv}
EXTRAS=${COLSMOL_EXTRAS:-}
STAMP="$VENV/.colsmol-deps"
WANT=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-$EXTRAS

if [ ! -x "$VENV/bin/python" ]; then
    echo "colsmol: creating virtual environment in $VENV"
    "$PY" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "colsmol: installing dependencies (torch is large: several minutes the first time)"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    SPEC="."
    [ -n "$EXTRAS" ] && SPEC=".[$EXTRAS]"
    "$VENV/bin/python" -m pip install -q -c constraints.txt -e "$SPEC"
    echo "$WANT" > "$STAMP"
else
    # Dependencies are current; (re)link this checkout into the venv, which is cheap.
    "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
        || "$VENV/bin/python" -m pip install -q --no-deps -e .
fi
