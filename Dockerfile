# FLARE22 segmentation container: the runtime only (no torch, no compilers), weights baked in.
#   docker build -t flare22 .                      # GPU image (CUDA 13 + cuDNN 9 base)
#   docker run --gpus all -v in:/workspace/inputs -v out:/workspace/outputs flare22 /workspace/predict.sh
# BASE_IMAGE and REQUIREMENTS swap the base and the ONNX Runtime build (see README).
ARG BASE_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}

ARG REQUIREMENTS=gpu.txt
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

# CUDA base images carry no Python; a base that already has python3 and venv skips apt.
# Versions are the base distribution's own (pinning them would tie the file to one base).
# hadolint ignore=DL3008
RUN if ! python3 -m venv --help >/dev/null 2>&1; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv

# requirements/wheels/, when present, holds wheels for builds without an index (tests, offline):
# pass --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/tmp/requirements/wheels.
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
COPY requirements/ /tmp/requirements/
RUN pip install --no-cache-dir --disable-pip-version-check -r "/tmp/requirements/${REQUIREMENTS}" \
    && rm -rf /tmp/requirements

WORKDIR /workspace
COPY inference/ /workspace/inference/
COPY weights/ /workspace/weights/
# Git stores the fp32 graphs only; the GPU image runs fp16 graphs derived from them.
RUN if [ "$REQUIREMENTS" = gpu.txt ] && [ ! -f /workspace/weights/fine_fp16.onnx ]; then \
        echo "weights/ has no fp16 graphs for the GPU image: run 'make gpu-weights' first" >&2; \
        exit 1; \
    fi
COPY predict.sh /workspace/predict.sh

RUN useradd --create-home --uid 1000 flare
USER 1000
# `docker run ... flare22` alone runs the FLARE command; naming it, as FLARE did, works too.
CMD ["/workspace/predict.sh"]
