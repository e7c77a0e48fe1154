#!/usr/bin/env bash
# The main job from nothing: set up, ingest the sample PDFs, answer a question about them.
# Downloads vidore/colSmol-256M and HuggingFaceTB/SmolVLM-256M-Instruct (about 1 GB) on first use;
# without hub access, point COLSMOL_ENCODER_MODEL / COLSMOL_GENERATOR_MODEL at local copies.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/libreoffice.sh  # for Office, web, Markdown and EPUB files (the samples are PDFs)
VENV=${COLSMOL_VENV:-.venv}
"$VENV/bin/colsmol" ingest samples/*.pdf
DEFAULT_QUESTION="What was Northwind Cycles' revenue in 2023?"
"$VENV/bin/colsmol" answer "${1:-$DEFAULT_QUESTION}"
