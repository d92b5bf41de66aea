"""Run the tritonserver bundled in the ``nvidia-pytriton`` wheel as a local process.

The PyPI wheel ``nvidia-pytriton==0.7.0`` ships Triton 2.51 with the python backend
only (no onnxruntime or tensorrt backend), runnable on CPU without Docker. This module
finds those files (:func:`find_bundled_tritonserver`), renders an allow-listed set of
server flags to argv (:class:`ServerConfig`, after PyTriton's
``triton_server_config.py``), and runs the server as a subprocess with readiness
polling (:class:`LocalTritonServer`, after PyTriton's ``triton_server.py``).
:func:`serve` is the blocking entry point behind ``hf2triton serve``.

How the bundled server is launched (each point checked against the real binary):

- ``--backend-directory`` is a folder this module builds and caches under
  ``$XDG_CACHE_HOME/hf2triton/backends/<wheel version>-py<X.Y>/`` (default
  ``~/.cache``; a temporary folder when that is not writable). It holds ``python/``
  with the wheel's ``libtriton_python.so``, ``triton_python_backend_utils.py`` and the
  stub built for the running Python. The copied stub loses its ``$ORIGIN`` RPATH, so the
  wheel's ``nvidia_pytriton.libs/`` goes on ``LD_LIBRARY_PATH``.
- The stub embeds ``libpython3.X.so.1.0`` and finds its ``sys.prefix`` through
  ``python3`` on ``PATH``. The running interpreter's ``bin/`` goes first on ``PATH``
  (without it the stubs use the system Python and fail with ``No module named
  'numpy'``) and its ``LIBDIR`` first on ``LD_LIBRARY_PATH`` (without it a pyenv or
  other non-system interpreter gets the *system* libpython of the same minor version).
- Every address binds to 127.0.0.1 unless ``host`` says otherwise.
- With ``--exit-on-error=true`` (the default, set explicitly) a model that fails to
  load makes the server unload the others and exit with status 1 ("failed to load all
  models") after about two seconds; :meth:`LocalTritonServer.start` turns that into a
  :class:`~hf2triton.errors.ServerError` carrying the load errors and the log tail.
- ``--strict-readiness=true``: ``/v2/health/ready`` answers 200 only once every model
  is READY.
- SIGINT and SIGTERM both make the server drain in-flight requests (at most
  ``--exit-timeout-secs``), unload the models (stopping the stubs) and exit 0.
- A port already in use makes the server exit 1 ("Socket ... already in use");
  :meth:`LocalTritonServer.start` checks fixed ports up front to say so clearly.

The server runs in its own session (process group) so that a terminal's Ctrl-C
reaches only the Python process, which then stops the server in order; a stubborn
server is killed with its whole group (its python-backend stubs included). On Linux
the server also gets SIGTERM if the thread that started it dies (``PR_SET_PDEATHSIG``,
as PyTriton does), so a killed test run does not leave servers holding ports: call
:meth:`LocalTritonServer.start` from a thread that outlives the server.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Callable

from hf2triton.errors import MissingDependencyError, OptionsError, ServerError

__all__ = [
    "LocalTritonServer",
    "ServerConfig",
    "StubWatch",
    "TritonDistribution",
    "find_bundled_tritonserver",
    "free_port",
    "prepare_backend_directory",
    "python_stubs",
    "restart_if_stubs_died",
    "serve",
    "watch_and_restart",
]

logger = logging.getLogger(__name__)

PYTRITON_DISTRIBUTION = "nvidia-pytriton"
PYTRITON_REQUIREMENT = "nvidia-pytriton==0.7.0"
MODEL_CONTROL_MODES = ("none", "poll", "explicit")
# The APIs a restricted server guards with a key header (names as ``tritonserver --help`` lists
# them). Model control (load/unload) is the ``model-repository`` API. Health, metadata,
# model-config, statistics and inference stay open: clients read the model config.
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
RESTRICTED_KEY_HEADER = "admin-key"  # HTTP header; gRPC metadata adds GRPC_RESTRICTED_PREFIX
GRPC_RESTRICTED_PREFIX = "triton-grpc-protocol-"  # what tritonserver expects in front of the gRPC key
LOG_TAIL_LINES = 40
_POLL_INTERVAL_S = 0.1
_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub")


# --------------------------------------------------------------------------- the bundled server


@dataclass(frozen=True)
class TritonDistribution:
    """Where the tritonserver files of the ``nvidia-pytriton`` wheel are."""

    server_binary: Path
    python_backend_lib: Path
    python_backend_utils: Path
    stub: Path
    library_dirs: tuple[Path, ...]
    version: str = "unknown"  # the wheel's version; keys the backend-directory cache


def _python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def find_bundled_tritonserver() -> TritonDistribution:
    """Locate the tritonserver bundled in the installed ``nvidia-pytriton`` wheel.

    Raises MissingDependencyError when the wheel is absent, incomplete, or has no
    python-backend stub for the running Python version.
    """
    spec = importlib.util.find_spec("pytriton")  # does not import (run) the package
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            f"the bundled tritonserver comes with the {PYTRITON_DISTRIBUTION} wheel, which is not installed; "
            f"install it with `pip install {PYTRITON_REQUIREMENT}` (Linux x86_64/aarch64)"
        )
    package_dir = Path(spec.origin).resolve().parent
    root = package_dir / "tritonserver"
    stubs_dir = root / "python_backend_stubs"
    candidates = list(stubs_dir.iterdir()) if stubs_dir.is_dir() else []
    stub_dirs = [d for d in candidates if (d / "triton_python_backend_stub").is_file()]
    available = sorted((p.name for p in stub_dirs), key=lambda v: tuple(int(x) for x in v.split(".") if x.isdigit()))
    distribution = TritonDistribution(
        server_binary=root / "bin" / "tritonserver",
        python_backend_lib=root / "backends" / "python" / "libtriton_python.so",
        python_backend_utils=root / "backends" / "python" / "triton_python_backend_utils.py",
        stub=stubs_dir / _python_tag() / "triton_python_backend_stub",
        library_dirs=tuple(
            p for p in (package_dir.parent / "nvidia_pytriton.libs", root / "external_libs") if p.is_dir()
        ),
        version=_wheel_version(),
    )
    missing = [
        str(p)
        for p in (distribution.server_binary, distribution.python_backend_lib, distribution.python_backend_utils)
        if not p.is_file()
    ]
    if missing:
        raise MissingDependencyError(
            f"the {PYTRITON_DISTRIBUTION} installation at {package_dir} has no bundled tritonserver "
            f"(missing: {', '.join(missing)}); reinstall it with `pip install --force-reinstall {PYTRITON_REQUIREMENT}`"
        )
    if not distribution.stub.is_file():
        raise MissingDependencyError(
            f"the bundled tritonserver has no python-backend stub for Python {_python_tag()}; "
            f"it has stubs for Python {', '.join(available) or 'none'}. Use one of those Pythons "
            f"with `pip install {PYTRITON_REQUIREMENT}`"
        )
    return distribution


def _wheel_version() -> str:
    try:
        return importlib.metadata.version(PYTRITON_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hf2triton" / "backends"


def _backend_is_complete(backend_dir: Path, distribution: TritonDistribution) -> bool:
    sources = (distribution.python_backend_lib, distribution.python_backend_utils, distribution.stub)
    for name, source in zip(_BACKEND_FILES, sources):
        target = backend_dir / "python" / name
        if not target.is_file() or target.stat().st_size != source.stat().st_size:
            return False
    return os.access(backend_dir / "python" / "triton_python_backend_stub", os.X_OK)


def _fill_backend_directory(backend_dir: Path, distribution: TritonDistribution) -> None:
    python_dir = backend_dir / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    sources = (distribution.python_backend_lib, distribution.python_backend_utils, distribution.stub)
    for name, source in zip(_BACKEND_FILES, sources):
        shutil.copy2(source, python_dir / name)
    (python_dir / "triton_python_backend_stub").chmod(0o755)


def prepare_backend_directory(distribution: TritonDistribution, cache_root: Path | None = None) -> Path:
    """Return a ``--backend-directory`` holding ``python/`` for the running Python.

    Built once under ``cache_root`` (default ``~/.cache/hf2triton/backends``) in a
    folder named after the wheel version and Python version, and rebuilt when a file is
    missing or differs in size. Built in a sibling temporary folder and renamed into
    place, so concurrent servers never see a half-copied backend. Falls back to a fresh
    temporary folder when the cache is not writable.
    """
    root = cache_root if cache_root is not None else _default_cache_root()
    target = root / f"{distribution.version}-py{_python_tag()}"
    if _backend_is_complete(target, distribution):
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
        _fill_backend_directory(staging, distribution)
        if target.exists():
            logger.info("rebuilding incomplete python-backend directory %s", target)
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:  # another process renamed its copy first
            shutil.rmtree(staging, ignore_errors=True)
        if _backend_is_complete(target, distribution):
            return target
    except OSError as error:
        logger.warning("cannot cache the python backend under %s (%s); using a temporary folder", root, error)
    fallback = Path(tempfile.mkdtemp(prefix="hf2triton-backends-"))
    _fill_backend_directory(fallback, distribution)
    return fallback


def server_environment(distribution: TritonDistribution, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver and its python-backend stubs need.

    Puts the running interpreter's ``bin/`` first on ``PATH`` (stubs import the venv's
    packages) and its ``LIBDIR`` then the wheel's library folders on
    ``LD_LIBRARY_PATH`` (stubs load the running interpreter's libpython).
    """
    env = dict(os.environ if base is None else base)
    library_dirs = [str(p) for p in distribution.library_dirs]
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).is_file():
        library_dirs.insert(0, libdir)
    if env.get("LD_LIBRARY_PATH"):
        library_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(library_dirs)
    python_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([python_bin, env["PATH"]]) if env.get("PATH") else python_bin
    return env


# --------------------------------------------------------------------------- configuration


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT does not count
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _client_host(host: str) -> str:
    """The address a local client uses to reach a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
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
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    log_file: Path | None = None
    log_verbose: int = 0
    model_control_mode: str = "none"
    repository_poll_secs: int | None = None
    load_models: tuple[str, ...] = ()
    exit_timeout_s: int = 10
    restricted_api_key: str | None = field(default=None, repr=False)  # when set, RESTRICTED_APIS need header RESTRICTED_KEY_HEADER
    metrics_config: tuple[str, ...] = ()  # e.g. ("summary_latencies=true",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_repository", Path(self.model_repository))
        if self.log_file is not None:
            object.__setattr__(self, "log_file", Path(self.log_file))
        object.__setattr__(self, "load_models", tuple(self.load_models))
        object.__setattr__(self, "metrics_config", tuple(self.metrics_config))
        problems: list[str] = []
        if self.model_control_mode not in MODEL_CONTROL_MODES:
            problems.append(
                f"model_control_mode must be one of {', '.join(MODEL_CONTROL_MODES)}, not {self.model_control_mode!r}"
            )
        for name in ("http_port", "grpc_port", "metrics_port"):
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
        if problems:
            raise OptionsError("invalid ServerConfig: " + "; ".join(problems))

    def with_free_ports(self) -> ServerConfig:
        """A copy whose ports of 0 are replaced by distinct free ports on ``host``."""
        taken = {p for p in (self.http_port, self.grpc_port, self.metrics_port) if p}
        ports: dict[str, int] = {}
        for name in ("http_port", "grpc_port", "metrics_port"):
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
            raise ValueError("resolve ports of 0 with ServerConfig.with_free_ports() before rendering argv")
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


def _valid_key(key: str) -> bool:
    return len(key) >= 8 and all(c.isalnum() or c in "-_" for c in key)


def redact_argv(argv: list[str], secret: str | None) -> str:
    """``argv`` as one line with ``secret`` replaced, fit for a log."""
    line = " ".join(argv)
    return line.replace(secret, "***") if secret else line


# --------------------------------------------------------------------------- the process


def _set_parent_death_signal() -> None:  # runs in the child between fork and exec
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        pr_set_pdeathsig = 1
        ctypes.CDLL(libc_name, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _read_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=lines))
    except OSError:
        return ""


_LOAD_ERROR_MARKERS = ("failed to load '", "Poll failed for model directory '")


def _load_errors(path: Path, limit: int = 10) -> list[str]:
    """The server's model load errors ("failed to load 'NAME' version N: ERROR", bad configs)."""
    found: list[str] = []
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                for marker in _LOAD_ERROR_MARKERS:
                    _, hit, rest = line.partition(marker)
                    if hit and ":" in rest:  # skip the bare "failed to load 'NAME'" summary
                        message = (hit + rest).strip().rstrip('"').replace("\\n", "\n    ").rstrip()
                        found.append(message.replace('\\"', '"'))
                        break
                if len(found) >= limit:
                    break
    except OSError:
        pass
    return found


def _http_get(
    url: str, timeout_s: float = 2.0, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 (local URL)
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


class LocalTritonServer:
    """The bundled tritonserver as a subprocess; a context manager.

    ::

        with LocalTritonServer(ServerConfig(repo, http_port=0, grpc_port=0, metrics_port=0)) as server:
            client = tritonclient.http.InferenceServerClient(server.http_url)
    """

    def __init__(self, config: ServerConfig, distribution: TritonDistribution | None = None) -> None:
        self._requested = config
        self._config = config
        self._distribution = distribution
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._log_path: Path | None = config.log_file
        self._lock = threading.Lock()
        self._restarts = 0

    # -- addresses
    @property
    def config(self) -> ServerConfig:
        """The configuration in use (ports resolved once started)."""
        return self._config

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint, the form tritonclient expects."""
        return f"{_client_host(self._config.host)}:{self._config.http_port}"

    @property
    def http_base_url(self) -> str:
        """``http://host:port`` of the HTTP endpoint (KServe v2 REST)."""
        return f"http://{self.http_url}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint, the form tritonclient expects."""
        return f"{_client_host(self._config.host)}:{self._config.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Full URL of the Prometheus metrics endpoint."""
        return f"http://{_client_host(self._config.host)}:{self._config.metrics_port}/metrics"

    @property
    def log_path(self) -> Path:
        """Where the server's stdout and stderr go (known once started, or when configured)."""
        if self._log_path is None:
            raise ServerError("the server has not been started, so it has no log file yet")
        return self._log_path

    @property
    def pid(self) -> int | None:
        """The tritonserver process id, None before start."""
        return self._process.pid if self._process is not None else None

    @property
    def returncode(self) -> int | None:
        """The exit status once the process ended, else None."""
        return self._process.poll() if self._process is not None else None

    def is_running(self) -> bool:
        """Whether the tritonserver process is alive."""
        return self._process is not None and self._process.poll() is None

    # -- lifecycle
    def start(self, ready_timeout_s: float = 120) -> LocalTritonServer:
        """Launch the server and wait until ``/v2/health/ready`` answers 200.

        Raises ServerError, with the model load errors and the last lines of the log,
        when the process exits or is not ready within ``ready_timeout_s`` (it is then
        stopped). Ports of 0 are picked afresh (up to 3 launches) if another process
        grabs one between the choice and the server's bind.
        """
        if self.is_running():
            raise ServerError(f"this tritonserver is already running (pid {self.pid})")
        repository = self._requested.model_repository
        if not repository.is_dir():
            raise ServerError(f"the model repository {repository} does not exist or is not a folder")
        distribution = self._distribution or find_bundled_tritonserver()
        backend_directory = prepare_backend_directory(distribution)
        requested_ports = (self._requested.http_port, self._requested.grpc_port, self._requested.metrics_port)
        launches = 3 if 0 in requested_ports else 1
        self._check_ports_free()
        deadline = time.monotonic() + ready_timeout_s
        for launch in range(1, launches + 1):
            self._launch(distribution, backend_directory)
            try:
                self._wait_ready(deadline, ready_timeout_s)
            except ServerError:
                self.stop()
                if launch < launches and _port_clash(self.log_path):
                    logger.info("a chosen port was taken meanwhile; relaunching with other free ports")
                    continue
                raise
            except BaseException:
                self.stop()
                raise
            break
        logger.info("tritonserver ready (pid %d): HTTP %s, gRPC %s", self.pid, self.http_url, self.grpc_url)
        return self

    def _launch(self, distribution: TritonDistribution, backend_directory: Path) -> None:
        self._config = self._requested.with_free_ports()
        argv = [str(distribution.server_binary), *self._config.to_argv(backend_directory)]
        self._log_path = self._open_log()
        if _client_host(self._config.host) != "127.0.0.1":
            logger.warning("tritonserver binds to %s: it is reachable beyond this machine", self._config.host)
        logger.info("starting tritonserver: %s", redact_argv(argv, self._config.restricted_api_key))
        logger.debug("tritonserver log: %s", self._log_path)
        self._process = subprocess.Popen(  # noqa: S603 (fixed binary, rendered flags)
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            env=server_environment(distribution),
            start_new_session=True,
            preexec_fn=_set_parent_death_signal if sys.platform.startswith("linux") else None,  # noqa: PLW1509
        )

    def _check_ports_free(self) -> None:
        """Fail clearly, before launching, when a port asked for by number is taken."""
        requested = self._requested
        busy = [
            f"{name} {port}"
            for name, port in (
                ("HTTP", requested.http_port),
                ("gRPC", requested.grpc_port),
                ("metrics", requested.metrics_port),
            )
            if port and not _port_is_free(requested.host, port)
        ]
        if busy:
            raise ServerError(
                f"cannot start tritonserver: port(s) {', '.join(busy)} on {requested.host} are already in use "
                "(another server?); choose other ports, or 0 for free ones"
            )

    def _open_log(self) -> Path:
        if self._requested.log_file is not None:
            path = self._requested.log_file
            path.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = path.open("ab" if self._restarts else "wb")  # a restart keeps the first run's log
        else:
            handle = tempfile.NamedTemporaryFile(prefix="tritonserver-", suffix=".log", delete=False)  # noqa: SIM115
            path = Path(handle.name)
            self._log_handle = handle
        return path

    def _wait_ready(self, deadline: float, timeout_s: float) -> None:
        assert self._process is not None
        url = f"{self.http_base_url}/v2/health/ready"
        while True:
            code = self._process.poll()
            if code is not None:
                raise ServerError(self._failure_message(f"tritonserver exited with status {code} before it was ready"))
            try:
                status, _ = _http_get(url, timeout_s=1.0)
                if status == 200:
                    return
            except (OSError, urllib.error.URLError):
                pass  # not listening yet
            if time.monotonic() >= deadline:
                raise ServerError(self._failure_message(f"tritonserver was not ready within {timeout_s:g} s ({url})"))
            time.sleep(_POLL_INTERVAL_S)

    def _failure_message(self, headline: str) -> str:
        path = self.log_path
        if self._log_handle is not None:
            self._log_handle.flush()
        parts = [headline + "."]
        errors = _load_errors(path)
        if errors:
            parts.append("Model load errors:\n  " + "\n  ".join(errors))
        tail = _read_tail(path).rstrip()
        parts.append(f"Last {LOG_TAIL_LINES} lines of {path}:\n{tail}" if tail else f"The log {path} is empty.")
        parts.append(f"Full server log: {path}")
        return "\n".join(parts)

    def restart(self, ready_timeout_s: float = 120, drain_s: float = 1.0) -> LocalTritonServer:
        """Stop (SIGINT, then after ``drain_s`` SIGKILL) and start again on the same ports."""
        self.stop(timeout_s=drain_s, term_timeout_s=0.5)
        self._requested = self._config  # ports resolved at the first start: clients keep their addresses
        self._restarts += 1
        return self.start(ready_timeout_s)

    @property
    def restarts(self) -> int:
        """How many times :meth:`restart` ran."""
        return self._restarts

    def stop(self, timeout_s: float = 15, term_timeout_s: float = 5.0) -> None:
        """Stop the server: SIGINT, wait ``timeout_s``, then SIGTERM, then SIGKILL. Idempotent."""
        with self._lock:
            process = self._process
            if process is None or (process.returncode is not None and self._log_handle is None):
                return  # never started, or already stopped and cleaned up
            if process.poll() is None:
                logger.info("stopping tritonserver (pid %d)", process.pid)
                for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGTERM, term_timeout_s), (signal.SIGKILL, 5.0)):
                    if sig == signal.SIGINT:
                        with contextlib.suppress(ProcessLookupError):
                            process.send_signal(sig)
                    else:
                        logger.warning("tritonserver (pid %d) still running; sending %s", process.pid, sig.name)
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(process.pid, sig)  # the server and its stubs
                    try:
                        process.wait(timeout=wait_s)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            _reap_group(process.pid)
            if self._log_handle is not None:
                self._log_handle.close()
                self._log_handle = None
            logger.info("tritonserver stopped (exit status %s); log: %s", process.returncode, self._log_path)

    def __enter__(self) -> LocalTritonServer:
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _port_clash(log_path: Path) -> bool:
    """Whether the server failed because a port was taken ("Socket '...' already in use")."""
    return "already in use" in _read_tail(log_path)


def _reap_group(pgid: int, grace_s: float = 2.0) -> None:
    """Give leftover processes of the server's group (stubs) ``grace_s``, then kill them.

    A process-group id stays reserved while any member lives, so this cannot hit an
    unrelated process.
    """
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(_POLL_INTERVAL_S)
    logger.warning("killing processes left in tritonserver's process group %d", pgid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


# --------------------------------------------------------------------------- health watch


@dataclass(frozen=True)
class StubProcess:
    """A python-backend stub: the process that runs one instance of a python model."""

    pid: int
    model: str
    version: str
    instance: str  # e.g. NAME_model_0_0

    @property
    def key(self) -> tuple[str, str, str]:
        return self.model, self.version, self.instance


def python_stubs(server_pid: int) -> list[StubProcess]:
    """The live python-backend stubs of the tritonserver ``server_pid`` (from /proc).

    A stub's argv is: binary, ``<repository>/<model>/<version>/model.py``, shm region,
    two sizes, the server's pid, the backend folder, an IPC id, the instance name, ...
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if len(argv) > 8 and argv[0].endswith("triton_python_backend_stub") and argv[5] == str(server_pid):
            model_py = Path(argv[1])
            found.append(StubProcess(int(entry.name), model_py.parent.parent.name, model_py.parent.name, argv[8]))
    return found


class StubWatch:
    """Finds python-backend stubs that died while their model version is still loaded.

    Triton 2.51 does not restart such a stub: every request to that model then fails with
    "Stub process '...' is not healthy" while the server still reports ready (measured).
    A stub counts as dead once it has been missing for ``confirm_s`` while the repository
    index still lists its model version READY. Stubs stopped on purpose do not count:
    when a version is unloaded (hot reload) its stubs exit a moment before the index
    stops listing it READY (over half a second was seen on a busy machine), and a
    version reloaded in place gets a new stub under the same name.
    """

    def __init__(self, server: LocalTritonServer, confirm_s: float = 3.0) -> None:
        self._server = server
        self._confirm_s = confirm_s
        self._known: set[tuple[str, str, str]] = set()
        self._missing_since: dict[tuple[str, str, str], float] = {}

    def check(self) -> list[str]:
        """Names (``model`` version ``v`` instance ``i``) of stubs confirmed dead since the last check."""
        pid = self._server.pid
        if pid is None:
            return []
        # The python backend also runs a short-lived stub per model (named after the model,
        # for config auto-completion) while loading it: only instance stubs are watched.
        current = {stub.key for stub in python_stubs(pid) if stub.instance != stub.model}
        try:
            ready = {(m["name"], m.get("version", "")) for m in repository_index(self._server) if m.get("state") == "READY"}
        except (ServerError, OSError, ValueError):
            return []  # the server is busy or going down; look again next time
        now = time.monotonic()
        missing = {key for key in self._known - current if key[:2] in ready}
        self._missing_since = {key: self._missing_since.get(key, now) for key in missing}
        dead = sorted(key for key, since in self._missing_since.items() if now - since >= self._confirm_s)
        for key in dead:
            del self._missing_since[key]
        self._known = current | set(self._missing_since)
        return [f"{model} version {version} instance {instance}" for model, version, instance in dead]

    def reset(self) -> None:
        """Forget what was seen (after a restart the stubs are new)."""
        self._known, self._missing_since = set(), {}


def restart_if_stubs_died(server: LocalTritonServer, watch: StubWatch) -> list[str]:
    """One health check: when stubs died, restart the server on the same ports and say so.

    Returns the dead stubs (empty when all is well).
    """
    dead = watch.check()
    if dead:
        logger.error(
            "python-backend stub(s) died: %s. Triton does not restart them (every request to that model "
            "fails while the server still reports ready), so hf2triton restarts tritonserver on the same ports",
            ", ".join(dead),
        )
        started = time.monotonic()
        server.restart()
        watch.reset()
        logger.warning("tritonserver restarted: ready again after %.1f s", time.monotonic() - started)
    return dead


def watch_and_restart(server: LocalTritonServer, stop: threading.Event, interval_s: float = 1.0) -> int:
    """Health-watch ``server`` every ``interval_s`` until ``stop`` is set; return the number of restarts."""
    watch, restarts = StubWatch(server), 0
    while not stop.wait(interval_s):
        if server.is_running() and restart_if_stubs_died(server, watch):
            restarts += 1
    return restarts


# --------------------------------------------------------------------------- blocking entry point


def repository_index(server: LocalTritonServer, timeout_s: float = 5.0) -> list[dict[str, str]]:
    """The server's model repository index (name, version, state, reason) via HTTP."""
    status, body = _http_get(
        f"{server.http_base_url}/v2/repository/index",
        timeout_s=timeout_s,
        method="POST",
        headers=server.config.admin_headers(),
    )
    if status != 200:
        raise ServerError(f"the repository index request failed with HTTP {status}: {body[:200]!r}")
    entries = json.loads(body)
    return [{k: str(v) for k, v in entry.items()} for entry in entries]


@dataclass
class _ServeState:
    """What ``serve``'s signal handler and its loop share."""

    stop_requested: bool = False
    starting: bool = False  # True while start() runs: a signal then aborts it


def serve(config: ServerConfig, ready_timeout_s: float = 120, health_watch: bool = True) -> int:
    """Run the server until SIGINT or SIGTERM (Ctrl-C); return an exit status.

    Logs the endpoints, the READY models and the log path once ready. Returns 0 after a
    requested shutdown, or the server's own (non-zero) status if it died by itself.
    With ``health_watch``, a python-backend stub that dies makes it restart the server
    (see :class:`StubWatch`). Raises ServerError when the server does not become ready.
    """
    # Plain flags, not threading.Event: the handler runs on the main thread, possibly in the
    # middle of Event.wait(), and Event.set() there deadlocks on the Event's own lock.
    state = _ServeState()
    server = LocalTritonServer(config)
    previous: dict[int, Callable[[int, FrameType | None], object] | int | None] = {}

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not state.stop_requested:
            logger.info("received %s, shutting down", name)
        state.stop_requested = True
        if state.starting:
            state.starting = False  # raise once; a second signal must not interrupt the clean-up
            raise KeyboardInterrupt(name)

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request_stop)
    try:
        state.starting = True
        server.start(ready_timeout_s)
        state.starting = False
        _log_endpoints(server)
        watch = StubWatch(server) if health_watch else None
        while True:
            time.sleep(1.0)  # a signal runs its handler and the sleep goes on (PEP 475)
            if state.stop_requested:
                break
            code = server.returncode
            if code is not None:
                logger.error(
                    "tritonserver exited by itself with status %d; last lines of %s:\n%s",
                    code,
                    server.log_path,
                    _read_tail(server.log_path).rstrip(),
                )
                return 128 - code if code < 0 else (code or 1)  # killed by signal N: 128 + N, as shells do
            if watch is not None and restart_if_stubs_died(server, watch):
                _log_endpoints(server)
        return 0
    except KeyboardInterrupt:
        logger.info("start-up interrupted")
        return 130
    finally:
        state.starting = False
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _log_endpoints(server: LocalTritonServer) -> None:
    logger.info("HTTP     %s", server.http_base_url)
    logger.info("gRPC     %s", server.grpc_url)
    logger.info("metrics  %s", server.metrics_url)
    try:
        models = repository_index(server)
    except (ServerError, OSError, ValueError) as error:
        logger.warning("could not list the models: %s", error)
        models = []
    ready = [f"{m['name']} (version {m.get('version', '?')})" for m in models if m.get("state") == "READY"]
    logger.info("models READY: %s", ", ".join(ready) if ready else "none")
    for model in models:
        if model.get("state") != "READY":
            logger.info("model %s: %s %s", model.get("name"), model.get("state", "unknown"), model.get("reason", ""))
    if server.config.restricted_api_key:
        logger.info("restricted APIs (%s) need the header '%s'", ", ".join(RESTRICTED_APIS), RESTRICTED_KEY_HEADER)
    logger.info("server log: %s", server.log_path)
    logger.info("tritonserver pid %d is ready; press Ctrl-C to stop", server.pid)
