#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install colsmol into it.
#   COLSMOL_VENV         where the venv lives (default: .venv in the repo)
#   COLSMOL_EXTRAS       extras to install, e.g. "test" (default: none); extras installed before are kept
#   COLSMOL_TORCH_INDEX  torch wheels: auto (default: CPU-only wheels when there is no NVIDIA GPU and the
#                        PyTorch CPU index answers), cpu, default (PyPI's), or an index URL
# Versions are pinned by constraints.txt, the set this project is tested with
# (torch 2.9.1 + torchvision 0.24.1: colpali-engine needs torch<2.14, and that pair imports together).
# scripts/install_plan.py decides what to install (tests/test_setup.py checks its decisions).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "colsmol needs Python 3.11 or newer")'

VENV=${COLSMOL_VENV:-.venv}
DIGEST=$("$PY" scripts/deps_digest.py .)
eval "$("$PY" scripts/install_plan.py --venv "$VENV" --digest "$DIGEST" --extras "${COLSMOL_EXTRAS:-}")"

if [ ! -x "$VENV/bin/python" ]; then
    echo "colsmol: creating virtual environment in $VENV"
    "$PY" -m venv "$VENV"
fi
if [ "$INSTALL" = 1 ]; then
    echo "colsmol: installing dependencies (torch is large: several minutes the first time)"
    [ -n "$NOTE" ] && echo "colsmol: $NOTE"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    if [ -n "$TORCH_INDEX" ]; then
        echo "colsmol: torch from $TORCH_INDEX"
        "$VENV/bin/python" -m pip install -q -c constraints.txt --index-url "$TORCH_INDEX" torch torchvision
    fi
    SPEC="."
    [ -n "$EXTRAS" ] && SPEC=".[$EXTRAS]"
    "$VENV/bin/python" -m pip install -q -c constraints.txt -e "$SPEC"
    "$PY" scripts/install_plan.py --venv "$VENV" --digest "$DIGEST" --extras "$EXTRAS" --write-stamp
else
    # Dependencies are current; (re)link this checkout into the venv, which is cheap.
    "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
        || "$VENV/bin/python" -m pip install -q --no-deps -e .
fi

# The test extra builds llama-cpp-python (llama.cpp's OpenAI-compatible server, the real backend of the openai
# generator's tests); those tests convert the tiny SmolVLM with llama.cpp's GGUF converter, which ships only in
# llama-cpp-python's sdist: keep it in the venv (once; CI caches the venv).
if [[ ",$EXTRAS," == *",test,"* ]] && [ ! -f "$VENV/share/llama.cpp/convert_hf_to_gguf.py" ]; then
    "$VENV/bin/python" scripts/fetch_gguf_converter.py "$VENV/share/llama.cpp" \
        || echo "colsmol: could not fetch llama.cpp's GGUF converter; the llama.cpp backend tests will be skipped"
fi
