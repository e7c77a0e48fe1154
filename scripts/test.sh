#!/usr/bin/env bash
# Set up from nothing and run the whole test suite (CPU only; GPU tests skip with their reason).
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests exercise: poppler (the alternative PDF renderer).
if ! command -v pdftoppm >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "colsmol: installing poppler-utils"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq poppler-utils) >/dev/null \
            || echo "colsmol: could not install poppler-utils; poppler renderer tests will be skipped"
    else
        echo "colsmol: pdftoppm not found; poppler renderer tests will be skipped (apt-get install poppler-utils)"
    fi
fi
# ... and chromium (tests/test_web.py drives the web page in it, headless).
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "colsmol: installing chromium"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null \
            || echo "colsmol: could not install chromium; web page tests will be skipped"
    else
        echo "colsmol: /usr/bin/chromium not found; web page tests will be skipped (apt-get install chromium)"
    fi
fi

# ... and LibreOffice (tests/test_formats.py converts real Office files; skipped, saying why, without it).
bash scripts/libreoffice.sh

# ... and Tesseract (OCR of pages without a text layer, tests/test_hybrid.py).
if ! command -v tesseract >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "colsmol: installing tesseract-ocr"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr tesseract-ocr-eng) \
            >/dev/null || echo "colsmol: could not install tesseract-ocr; OCR tests will be skipped"
    else
        echo "colsmol: tesseract not found; OCR tests will be skipped (apt-get install tesseract-ocr)"
    fi
fi

COLSMOL_EXTRAS=test bash scripts/setup.sh
VENV=${COLSMOL_VENV:-.venv}
# The hub is unreachable from test machines; tests build tiny checkpoints instead.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$VENV/bin/python" -m ruff check indexer retriever rag api tests bench testkit scripts
"$VENV/bin/python" -m mypy  # the library's types (pyproject [tool.mypy]: indexer retriever rag api)
exec "$VENV/bin/python" -m pytest "$@"
