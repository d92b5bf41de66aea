"""Serving: run the tritonserver bundled in ``nvidia-pytriton`` locally, watch it, check its health.

- :mod:`~hf2triton.serving.distribution`: the wheel's server files, the backend folder, the stub environment
- :mod:`~hf2triton.serving.config`: :class:`ServerConfig` (validated flags → argv), ports, defaults
- :mod:`~hf2triton.serving.process`: :class:`LocalTritonServer`, the subprocess with readiness polling
- :mod:`~hf2triton.serving.watch`: the one health loop (dead python-backend stubs → restart with backoff)
- :mod:`~hf2triton.serving.serve`: :func:`serve`, the foreground loop behind ``hf2triton serve``
- :mod:`~hf2triton.serving.health`: :func:`check_health`, behind ``hf2triton health``

Only the standard library is imported here: the CLI and container health checks import it cheaply.
"""

from typing import Any

from hf2triton.serving.config import (
    ADMIN_KEY_ENV,
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    DEFAULT_MODEL_CONTROL_MODE,
    MODEL_CONTROL_MODES,
    RESTRICTED_APIS,
    RESTRICTED_KEY_HEADER,
    ServerConfig,
    free_port,
    redact_argv,
)
from hf2triton.serving.distribution import (
    TritonDistribution,
    find_bundled_tritonserver,
    prepare_backend_directory,
    server_environment,
)
from hf2triton.serving.process import LocalTritonServer, repository_index
from hf2triton.serving.serve import serve
from hf2triton.serving.watch import (
    StubWatch,
    SupervisionPolicy,
    SupervisionResult,
    python_stubs,
    supervise,
    watch_and_restart,
)

__all__ = [
    "ADMIN_KEY_ENV",
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_MODEL_CONTROL_MODE",
    "MODEL_CONTROL_MODES",
    "RESTRICTED_APIS",
    "RESTRICTED_KEY_HEADER",
    "HealthReport",
    "LocalTritonServer",
    "ServerConfig",
    "StubWatch",
    "SupervisionPolicy",
    "SupervisionResult",
    "TritonDistribution",
    "check_health",
    "find_bundled_tritonserver",
    "free_port",
    "prepare_backend_directory",
    "python_stubs",
    "redact_argv",
    "repository_index",
    "serve",
    "server_environment",
    "supervise",
    "watch_and_restart",
]


def __getattr__(name: str) -> Any:
    # health is imported on first use: ``python -m hf2triton.serving.health`` (the container
    # probe) must not find it imported already by the package (runpy warns about that).
    if name in ("HealthReport", "check_health"):
        from hf2triton.serving import health

        return getattr(health, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
