"""What tritonserver is asked to do: an allow-listed set of flags rendered to argv.

:class:`ServerConfig` (after PyTriton's ``triton_server_config.py``) validates every
setting at construction and raises :class:`~hf2triton.errors.OptionsError` listing each
problem. The defaults below are the ones the CLI offers; it imports them from here.

- Every address binds to 127.0.0.1 unless ``host`` says otherwise.
- ``--exit-on-error=true`` and ``--strict-readiness=true`` are always set (see
  :mod:`hf2triton.serving.process`).
- gRPC can use TLS (``grpc_use_ssl``; ``grpc_use_ssl_mutual`` also demands a client
  certificate signed by ``grpc_root_cert``). The bundled tritonserver 2.51 has no TLS for
  HTTP or metrics: they stay plain on 127.0.0.1, which is what readiness polling and
  ``hf2triton health`` use.
- ``model_control_mode="explicit"`` lets whoever reaches the server load and unload
  models. It is refused without ``restricted_api_key`` (which guards that API with a
  header) unless ``allow_unauthenticated_model_control`` says the user wants it open.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from hf2triton.contract import DEFAULT_HOST, DEFAULT_PORTS
from hf2triton.errors import OptionsError

__all__ = [
    "ADMIN_KEY_ENV",
    "DEFAULT_GRPC_PORT",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_MODEL_CONTROL_MODE",
    "GRPC_RESTRICTED_PREFIX",
    "MODEL_CONTROL_MODES",
    "RESTRICTED_APIS",
    "RESTRICTED_KEY_HEADER",
    "ServerConfig",
    "client_host",
    "free_port",
    "is_loopback",
    "port_is_free",
    "redact_argv",
]

DEFAULT_HTTP_PORT = DEFAULT_PORTS["http"]
DEFAULT_GRPC_PORT = DEFAULT_PORTS["grpc"]
DEFAULT_METRICS_PORT = DEFAULT_PORTS["metrics"]
MODEL_CONTROL_MODES = ("none", "poll", "explicit")
DEFAULT_MODEL_CONTROL_MODE = "none"
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"  # the variable docker-compose.yml and deploy/k8s read too
# The APIs a restricted server guards with a key header (names as ``tritonserver --help`` lists
# them). Model control (load/unload) is the ``model-repository`` API. Health, metadata,
# model-config, statistics and inference stay open: clients read the model config.
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
RESTRICTED_KEY_HEADER = "admin-key"  # HTTP header; gRPC metadata adds GRPC_RESTRICTED_PREFIX
GRPC_RESTRICTED_PREFIX = "triton-grpc-protocol-"  # what tritonserver expects in front of the gRPC key
_PORT_FIELDS = ("http_port", "grpc_port", "metrics_port")
_TLS_FILE_FIELDS = ("grpc_server_cert", "grpc_server_key", "grpc_root_cert")


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could bind ``port`` on ``host`` now (a socket in TIME_WAIT does not hold it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT does not count
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def is_loopback(host: str) -> bool:
    """Whether a server bound to ``host`` is reachable from this machine only (0.0.0.0 is not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def client_host(host: str) -> str:
    """The address a local client uses to reach a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return DEFAULT_HOST
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@dataclass(frozen=True)
class ServerConfig:
    """The tritonserver flags hf2triton sets; anything else keeps the server default.

    A port of 0 means "pick a free port when the server starts" (see
    :meth:`with_free_ports`). ``log_file=None`` streams the server's output to a fresh
    temporary file (kept after the server stops and named in every error), because the
    repository's parent folder may be read-only or shared by several servers.
    """

    model_repository: Path
    host: str = DEFAULT_HOST
    http_port: int = DEFAULT_HTTP_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    log_file: Path | None = None
    log_verbose: int = 0
    model_control_mode: str = DEFAULT_MODEL_CONTROL_MODE
    repository_poll_secs: int | None = None
    load_models: tuple[str, ...] = ()
    exit_timeout_s: int = 10
    restricted_api_key: str | None = field(default=None, repr=False)  # when set, RESTRICTED_APIS need header RESTRICTED_KEY_HEADER
    metrics_config: tuple[str, ...] = ()  # e.g. ("summary_latencies=true",)
    allow_unauthenticated_model_control: bool = False  # explicit mode without restricted_api_key
    # gRPC TLS, named as tritonserver names the flags. PEM files; mutual implies use_ssl.
    grpc_use_ssl: bool = False
    grpc_use_ssl_mutual: bool = False  # clients must present a certificate signed by grpc_root_cert
    grpc_server_cert: Path | None = None
    grpc_server_key: Path | None = None
    grpc_root_cert: Path | None = None

    @property
    def grpc_tls(self) -> bool:
        """Whether the gRPC endpoint speaks TLS."""
        return self.grpc_use_ssl or self.grpc_use_ssl_mutual

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_repository", Path(self.model_repository))
        if self.log_file is not None:
            object.__setattr__(self, "log_file", Path(self.log_file))
        for name in _TLS_FILE_FIELDS:
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)).expanduser().resolve())
        object.__setattr__(self, "load_models", tuple(self.load_models))
        object.__setattr__(self, "metrics_config", tuple(self.metrics_config))
        problems: list[str] = []
        if self.model_control_mode not in MODEL_CONTROL_MODES:
            problems.append(
                f"model_control_mode must be one of {', '.join(MODEL_CONTROL_MODES)}, not {self.model_control_mode!r}"
            )
        for name in _PORT_FIELDS:
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                problems.append(f"{name} must be in 0..65535, not {port}")
        fixed = [p for p in (self.http_port, self.grpc_port, self.metrics_port) if p]
        if len(fixed) != len(set(fixed)):
            problems.append(f"the HTTP, gRPC and metrics ports must differ (got {fixed})")
        if self.log_verbose < 0:
            problems.append(f"log_verbose must be >= 0, not {self.log_verbose}")
        if self.exit_timeout_s < 0:
            problems.append(f"exit_timeout_s must be >= 0, not {self.exit_timeout_s}")
        if self.repository_poll_secs is not None:
            if self.model_control_mode != "poll":
                problems.append("repository_poll_secs only applies with model_control_mode='poll'")
            elif self.repository_poll_secs < 1:
                problems.append(f"repository_poll_secs must be >= 1, not {self.repository_poll_secs}")
        if self.load_models:
            if self.model_control_mode != "explicit":
                problems.append("load_models only applies with model_control_mode='explicit'")
            if "*" in self.load_models and len(self.load_models) > 1:
                problems.append("load_models='*' (every model) must be the only entry")
        if not self.host:
            problems.append("host must not be empty")
        if self.restricted_api_key is not None and not _valid_key(self.restricted_api_key):
            problems.append("restricted_api_key must be 8 or more letters, digits, '-' or '_'")
        if (
            self.model_control_mode == "explicit"
            and self.restricted_api_key is None
            and not self.allow_unauthenticated_model_control
        ):
            problems.append(
                f"model control mode 'explicit' without an admin key lets anyone who reaches the server load "
                f"and unload models: set an admin key (the CLI reads ${ADMIN_KEY_ENV}) or allow it explicitly "
                "(--allow-unauthenticated-model-control)"
            )
        problems += self._tls_problems()
        if problems:
            raise OptionsError("invalid server settings: " + "; ".join(problems))

    def _tls_problems(self) -> list[str]:
        given = [name for name in _TLS_FILE_FIELDS if getattr(self, name) is not None]
        if not self.grpc_tls:
            verb = "need" if len(given) > 1 else "needs"
            return [f"{', '.join(given)} {verb} grpc_use_ssl (--grpc-use-ssl)"] if given else []
        problems = [f"grpc TLS needs {name} (--{name.replace('_', '-')})"
                    for name in ("grpc_server_cert", "grpc_server_key") if name not in given]
        if self.grpc_use_ssl_mutual and self.grpc_root_cert is None:
            problems.append("grpc_use_ssl_mutual needs grpc_root_cert (--grpc-root-cert): the CA that signs "
                            "client certificates")
        problems += [_unreadable(name, getattr(self, name)) for name in given]
        return [problem for problem in problems if problem]

    def with_free_ports(self) -> ServerConfig:
        """A copy whose ports of 0 are replaced by distinct free ports on ``host``."""
        taken = {p for p in (self.http_port, self.grpc_port, self.metrics_port) if p}
        ports: dict[str, int] = {}
        for name in _PORT_FIELDS:
            if getattr(self, name) == 0:
                port = free_port(self.host)
                while port in taken:
                    port = free_port(self.host)
                taken.add(port)
                ports[name] = port
        return dataclasses.replace(self, **ports)

    def to_argv(self, backend_directory: Path) -> list[str]:
        """The tritonserver arguments (without the binary) for this configuration.

        Ports must be resolved first (:meth:`with_free_ports`): a port of 0 would let the
        server pick one nobody could find.
        """
        if 0 in (self.http_port, self.grpc_port, self.metrics_port):
            raise OptionsError("resolve ports of 0 with ServerConfig.with_free_ports() before rendering argv")
        args: list[tuple[str, object]] = [
            ("model-repository", self.model_repository.resolve()),
            ("backend-directory", Path(backend_directory).resolve()),
            ("model-control-mode", self.model_control_mode),
        ]
        if self.repository_poll_secs is not None:
            args.append(("repository-poll-secs", self.repository_poll_secs))
        args.extend(("load-model", name) for name in self.load_models)
        args += [
            ("strict-readiness", "true"),
            ("exit-on-error", "true"),
            ("exit-timeout-secs", self.exit_timeout_s),
            ("log-verbose", self.log_verbose),
            ("allow-http", "true"),
            ("http-address", self.host),
            ("http-port", self.http_port),
            ("allow-grpc", "true"),
            ("grpc-address", self.host),
            ("grpc-port", self.grpc_port),
            ("allow-metrics", "true"),
            ("allow-gpu-metrics", "false"),
            ("metrics-address", self.host),
            ("metrics-port", self.metrics_port),
        ]
        args.extend(("metrics-config", setting) for setting in self.metrics_config)
        if self.grpc_tls:
            args += [("grpc-use-ssl", "true"), ("grpc-server-cert", self.grpc_server_cert),
                     ("grpc-server-key", self.grpc_server_key)]
            if self.grpc_root_cert is not None:
                args.append(("grpc-root-cert", self.grpc_root_cert))
            if self.grpc_use_ssl_mutual:
                args.append(("grpc-use-ssl-mutual", "true"))
        if self.restricted_api_key is not None:
            restriction = f"{','.join(RESTRICTED_APIS)}:{RESTRICTED_KEY_HEADER}={self.restricted_api_key}"
            args += [("http-restricted-api", restriction), ("grpc-restricted-protocol", restriction)]
        return [f"--{key}={value}" for key, value in args]

    def admin_headers(self, protocol: str = "http") -> dict[str, str]:
        """The header a request to a restricted API needs (empty when nothing is restricted).

        Over gRPC tritonserver expects the key under ``triton-grpc-protocol-<header>``.
        """
        if not self.restricted_api_key:
            return {}
        prefix = GRPC_RESTRICTED_PREFIX if protocol == "grpc" else ""
        return {prefix + RESTRICTED_KEY_HEADER: self.restricted_api_key}


def _unreadable(name: str, path: Path) -> str:
    """Why the PEM file ``path`` (setting ``name``) cannot serve, or "" when it can."""
    if not path.is_file():
        return f"{name} {path} is not a file (expected a PEM file)"
    if not os.access(path, os.R_OK):
        return f"{name} {path} is not readable"
    return ""


def _valid_key(key: str) -> bool:
    return len(key) >= 8 and all(c.isalnum() or c in "-_" for c in key)


def redact_argv(argv: list[str], secret: str | None) -> str:
    """``argv`` as one line with ``secret`` replaced, fit for a log."""
    line = " ".join(argv)
    return line.replace(secret, "***") if secret else line
