# syntax=docker/dockerfile:1
# colsmol: visual document search + QA (ColSmolVLM -> Qdrant -> GPU MaxSim -> SmolVLM).
#
# GPU image (default):
#   docker build -t colsmol .
#   docker run --gpus all -p 127.0.0.1:8000:8000 -e COLSMOL_API_KEY=... -v colsmol-data:/data -v colsmol-models:/models colsmol
#   The host needs an NVIDIA driver (>= 570 for CUDA 12.8) and the NVIDIA Container Toolkit.
#   torch's PyPI wheel (pinned in constraints.txt) brings its own CUDA 12.8 libraries (the
#   nvidia-*-cu12 wheels), so the CUDA *base* image is enough: it sets up the driver hooks
#   (NVIDIA_VISIBLE_DEVICES / NVIDIA_DRIVER_CAPABILITIES) and nothing is installed twice.
#
# CPU image (no GPU, smaller torch):
#   docker build -t colsmol:cpu \
#     --build-arg BASE_IMAGE=python:3.11-slim \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu .
#   TORCH_INDEX_URL installs torch/torchvision from PyTorch's CPU index first (same versions as
#   constraints.txt, "+cpu" builds); without it the CPU image gets the CUDA wheels, which also run
#   on CPU but weigh ~3 GB more.
#
# Volumes: /data (COLSMOL_DATA_DIR: embedded Qdrant Edge shard, page images) and /models
# (HF_HOME: downloaded encoder and generator weights). Runs as the unprivileged user "colsmol".
ARG BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=""
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Python 3.11+ with venv (the CUDA base has no Python: Ubuntu 24.04 brings 3.12; python:3.11-slim
# already has it), poppler-utils for the optional pdf2image renderer (COLSMOL_RENDERER=poppler), and LibreOffice
# without its GUI (Writer, Calc, Impress) with metric-compatible fonts, which converts Office, web, Markdown, EPUB
# and text files to PDF for ingest (util-linux's unshare, already in the base images, gives it no network).
RUN set -eux; \
    apt-get update; \
    if ! python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
        apt-get install -y --no-install-recommends python3 python3-venv; \
    fi; \
    apt-get install -y --no-install-recommends poppler-utils ca-certificates \
        libreoffice-core-nogui libreoffice-writer-nogui libreoffice-calc-nogui libreoffice-impress-nogui \
        fonts-crosextra-carlito fonts-crosextra-caladea; \
    rm -rf /var/lib/apt/lists/*; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/python -m pip install --upgrade pip

WORKDIR /app

# Dependencies first (a layer that survives code changes): exactly pyproject's list, pinned by constraints.txt.
COPY pyproject.toml constraints.txt ./
RUN set -eux; \
    if [ -n "$TORCH_INDEX_URL" ]; then \
        grep -E '^(torch|torchvision)==' constraints.txt > /tmp/torch.txt; \
        pip install --index-url "$TORCH_INDEX_URL" -r /tmp/torch.txt; \
    fi; \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt; \
    pip install -c constraints.txt -r /tmp/requirements.txt

# Then colsmol itself (the same `pip install -c constraints.txt .`; its dependencies are already there).
# setup.py builds the optional CPU MaxSim kernel (retriever/_cpu_maxsim.cpp, several times faster than the torch path on
# AVX2 CPUs). The compiler and Python's headers stay in the image: at run time Triton builds its kernel launcher with
# them (the fused GPU MaxSim kernel) and torch.compile builds its generated code (the static decode of answers);
# without them both always fall back to their slower paths.
COPY README.md setup.py ./
COPY indexer ./indexer
COPY retriever ./retriever
COPY rag ./rag
COPY api ./api
RUN set -eux; \
    apt-get update; \
    extra=""; \
    python -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
        || extra="python3-dev"; \
    apt-get install -y --no-install-recommends gcc g++ libc6-dev $extra; \
    rm -rf /var/lib/apt/lists/*; \
    pip install -c constraints.txt .; \
    (cd / && python -c 'from retriever.cpu_maxsim import kernel_available as k; print("CPU MaxSim kernel:", k())'); \
    rm -rf /app/build

# The image's Python finds a C compiler and its own headers (what Triton and torch.compile look for).
RUN python -c "import os, shutil, sys, sysconfig; sys.exit(shutil.which('gcc') is None or not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"

RUN set -eux; \
    useradd --system --uid 10001 --user-group --home-dir /home/colsmol --create-home --shell /usr/sbin/nologin colsmol; \
    mkdir -p /data /models; \
    chown colsmol:colsmol /data /models

ENV COLSMOL_DATA_DIR=/data \
    HF_HOME=/models

VOLUME ["/data", "/models"]

USER colsmol
WORKDIR /home/colsmol
EXPOSE 8000

# Liveness only (/healthz answers as soon as HTTP is up; /readyz waits for the models). No curl in the image.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

CMD ["colsmol", "serve", "--host", "0.0.0.0", "--port", "8000"]
