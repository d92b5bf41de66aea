# The hf2triton gateway (OpenAI/TEI-compatible HTTP in front of Triton's gRPC) on its own:
# no Triton, no export stack, only the gateway's dependencies at the versions in constraints.txt.
# Built by docker-compose.yml (context: the repository root) and used by deploy/helm/hf2triton.
FROM python:3.12-slim

COPY constraints.txt /opt/hf2triton/constraints.txt
RUN python -m pip install --no-cache-dir --constraint /opt/hf2triton/constraints.txt \
        numpy tokenizers "tritonclient[grpc]" starlette uvicorn httptools orjson prometheus-client

COPY pyproject.toml README.md /opt/hf2triton/
COPY src /opt/hf2triton/src
RUN python -m pip install --no-cache-dir --no-deps /opt/hf2triton \
    && useradd --uid 1000 --no-create-home --shell /usr/sbin/nologin gateway

USER 1000
EXPOSE 8080
ENTRYPOINT ["python", "-m", "hf2triton.gateway"]
CMD ["--host", "0.0.0.0", "--port", "8080"]
