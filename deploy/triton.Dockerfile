# The Triton image plus what hf2triton's python-backend steps import (tokenizers, numpy,
# onnxruntime) and the hf2triton package itself, for `hf2triton check` inside the container.
# Built by docker-compose.yml (context: the repository root); TRITON_VERSION comes from .env.
ARG TRITON_VERSION
FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3

# Ubuntu 24.04 marks the system Python as externally managed; this image is ours to change.
ENV PIP_BREAK_SYSTEM_PACKAGES=1
COPY deploy/requirements-triton.txt /opt/hf2triton/requirements-triton.txt
RUN python3 -m pip install --no-cache-dir -r /opt/hf2triton/requirements-triton.txt

# hf2triton without its export dependencies (torch, transformers): `hf2triton check`, and the
# health check `python3 -m hf2triton.serving.health` that docker-compose.yml and deploy/k8s run.
COPY pyproject.toml README.md /opt/hf2triton/
COPY src /opt/hf2triton/src
RUN python3 -m pip install --no-cache-dir --no-deps /opt/hf2triton

USER triton-server
