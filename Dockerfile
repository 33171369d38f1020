# syntax=docker/dockerfile:1
# The image of `streamer serve`: one Dockerfile, CPU or CUDA by build argument.
#
#   CPU (embedded preset, weights inside the pip packages):
#     docker build -t streamer:cpu .
#   CUDA (the default torch wheel of PyPI: CUDA 13 libraries included, driver >= 580):
#     docker build -t streamer:cuda \
#       --build-arg BASE=nvidia/cuda:13.0.1-runtime-ubuntu24.04 \
#       --build-arg TORCH_INDEX=https://pypi.org/simple .
#   pyannote weights baked in (a folder of the build context holding segmentation/ and
#   embedding/, each with its pytorch_model.bin): --build-arg MODELS_DIR=models
#
# Configuration is by STREAMER_* environment variables (one per `streamer serve` flag)
# or by arguments after the image name. See docs/DEPLOY.md.

ARG BASE=python:3.11-slim-bookworm

# -- python: the base image with a Python 3 (the CUDA base has none: Ubuntu's) ----------
FROM ${BASE} AS python
ARG DEBIAN_FRONTEND=noninteractive
# Versions are those of the base image's distribution (Debian or Ubuntu, by BASE):
# one pin cannot fit both.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# -- build: torch, then the package, in a virtual environment ----------------------------
FROM python AS build
ARG DEBIAN_FRONTEND=noninteractive
# A C compiler for webrtcvad (a dependency of resemblyzer, published as source only), and
# Python's headers where the base lacks them.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && if ! python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_path("include"), "Python.h")))'; then \
        apt-get install -y --no-install-recommends python3-dev; \
    fi \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY streamer/ streamer/
# redis: shared state across replicas (--redis-url); hub: hf:REPO model sources.
# ONNX Runtime comes with the package: the embedded preset's default backend.
ARG EXTRAS=redis,hub
RUN pip install --no-cache-dir "./[${EXTRAS}]"

# -- runtime: the environment, the models, a user without privileges --------------------
FROM python AS runtime
RUN groupadd --system --gid 10001 streamer \
    && useradd --system --uid 10001 --gid streamer --home-dir /home/streamer \
        --create-home --shell /usr/sbin/nologin streamer
COPY --from=build /opt/venv /opt/venv
# Weights for the pyannote preset, read-only: --segmentation /models/segmentation
# --embedding /models/embedding. The default folder holds only its README; a volume
# mounted at /models replaces it.
ARG MODELS_DIR=deploy/models
COPY ${MODELS_DIR}/ /models/
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/streamer \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    STREAMER_HOST=0.0.0.0
USER 10001:10001
WORKDIR /home/streamer
# `streamer serve` listens on $PORT when set (PaaS), else 8000.
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('STREAMER_PORT') or os.environ.get('PORT') or '8000'; urllib.request.urlopen('http://127.0.0.1:' + port + '/healthz', timeout=4)"]
ENTRYPOINT ["streamer", "serve"]
