"""The bundled tritonserver as a subprocess with readiness polling (after PyTriton's
``triton_server.py``), and the server log read back into clear errors.

How the process behaves (each point checked against the real binary):

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
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO, Callable

from hf2triton.errors import ServerError
from hf2triton.serving.config import ServerConfig, client_host, is_loopback, port_is_free, redact_argv
from hf2triton.serving.distribution import (
    TritonDistribution,
    find_bundled_tritonserver,
    prepare_backend_directory,
    server_environment,
)

__all__ = ["LOG_TAIL_LINES", "LocalTritonServer", "http_request", "read_tail", "repository_index"]

logger = logging.getLogger(__name__)

LOG_TAIL_LINES = 40
_POLL_INTERVAL_S = 0.1
# A start that fails or is cancelled kills the half-started server quickly: nothing to drain.
_ABORT_STOP_S = 1.0


def _set_parent_death_signal() -> None:  # runs in the child between fork and exec
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        pr_set_pdeathsig = 1
        ctypes.CDLL(libc_name, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def read_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file (empty when it cannot be read)."""
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


def http_request(
    url: str, timeout_s: float = 2.0, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """(status, body) of a plain HTTP request; HTTP errors are answers, not exceptions."""
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
        self._original = config  # ports of 0 stay 0 here: a restart may pick them afresh
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
        return f"{client_host(self._config.host)}:{self._config.http_port}"

    @property
    def http_base_url(self) -> str:
        """``http://host:port`` of the HTTP endpoint (KServe v2 REST)."""
        return f"http://{self.http_url}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint, the form tritonclient expects."""
        return f"{client_host(self._config.host)}:{self._config.grpc_port}"

    @property
    def metrics_url(self) -> str:
        """Full URL of the Prometheus metrics endpoint."""
        return f"http://{client_host(self._config.host)}:{self._config.metrics_port}/metrics"

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
    def start(self, ready_timeout_s: float = 120, cancel: Callable[[], bool] | None = None) -> LocalTritonServer:
        """Launch the server and wait until ``/v2/health/ready`` answers 200.

        Raises ServerError, with the model load errors and the last lines of the log,
        when the process exits or is not ready within ``ready_timeout_s`` (it is then
        stopped). Ports of 0 are picked afresh (up to 3 launches) if another process
        grabs one between the choice and the server's bind. ``cancel`` is polled every
        0.1 s while waiting: when it returns True the half-started server is killed and
        ServerError says the start was cancelled.
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
                self._wait_ready(deadline, ready_timeout_s, cancel or _never)
            except ServerError:
                self.stop(timeout_s=_ABORT_STOP_S, term_timeout_s=0.5, reap_s=_ABORT_STOP_S)
                if launch < launches and _port_clash(self.log_path):
                    logger.info("a chosen port was taken meanwhile; relaunching with other free ports")
                    continue
                raise
            except BaseException:
                self.stop(timeout_s=_ABORT_STOP_S, term_timeout_s=0.5, reap_s=_ABORT_STOP_S)
                raise
            break
        logger.info("tritonserver ready (pid %d): HTTP %s, gRPC %s", self.pid, self.http_url, self.grpc_url)
        return self

    def _launch(self, distribution: TritonDistribution, backend_directory: Path) -> None:
        self._config = self._requested.with_free_ports()
        argv = [str(distribution.server_binary), *self._config.to_argv(backend_directory)]
        self._log_path = self._open_log()
        if not is_loopback(self._config.host):
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
        busy = _busy_ports(self._requested)
        if busy:
            raise ServerError(
                f"cannot start tritonserver: port(s) {', '.join(busy)} on {self._requested.host} are already in use "
                "(another server?); choose other ports, or 0 for free ones"
            )

    def ports_in_use(self) -> list[str]:
        """The server's own ports (as last resolved) that something else holds now, e.g. ``HTTP 8000``."""
        return [] if self.is_running() else _busy_ports(self._config)

    @property
    def can_repick_ports(self) -> bool:
        """Whether some port was asked for as 0, so a restart may move it to another free port."""
        return 0 in (self._original.http_port, self._original.grpc_port, self._original.metrics_port)

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

    def _wait_ready(self, deadline: float, timeout_s: float, cancel: Callable[[], bool]) -> None:
        assert self._process is not None
        url = f"{self.http_base_url}/v2/health/ready"
        while True:
            code = self._process.poll()
            if code is not None:
                raise ServerError(self._failure_message(f"tritonserver exited with status {code} before it was ready"))
            if cancel():
                raise ServerError("tritonserver start-up cancelled")
            try:
                status, _ = http_request(url, timeout_s=1.0)
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
        tail = read_tail(path).rstrip()
        parts.append(f"Last {LOG_TAIL_LINES} lines of {path}:\n{tail}" if tail else f"The log {path} is empty.")
        parts.append(f"Full server log: {path}")
        return "\n".join(parts)

    def restart(
        self,
        ready_timeout_s: float = 120,
        drain_s: float = 1.0,
        cancel: Callable[[], bool] | None = None,
        repick_ports: bool = False,
    ) -> LocalTritonServer:
        """Stop (SIGINT, then after ``drain_s`` SIGKILL) and start again.

        The ports stay those of the last start, so clients keep their addresses, unless
        ``repick_ports``: then ports first asked for as 0 are picked afresh (the others stay).
        """
        self.stop(timeout_s=drain_s, term_timeout_s=0.5)
        self._requested = self._original if repick_ports else self._config
        self._restarts += 1
        return self.start(ready_timeout_s, cancel)

    @property
    def restarts(self) -> int:
        """How many times :meth:`restart` ran."""
        return self._restarts

    def stop(self, timeout_s: float = 15, term_timeout_s: float = 5.0, reap_s: float = 2.0) -> None:
        """Stop the server: SIGINT, wait ``timeout_s``, then SIGTERM, then SIGKILL. Idempotent.

        Stubs left in the server's process group get ``reap_s`` more, then SIGKILL.
        """
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
            _reap_group(process.pid, reap_s)
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


def _never() -> bool:
    return False


def _busy_ports(config: ServerConfig) -> list[str]:
    """The ports of ``config`` asked for by number that something else holds, e.g. ``HTTP 8000``."""
    named = (("HTTP", config.http_port), ("gRPC", config.grpc_port), ("metrics", config.metrics_port))
    return [f"{name} {port}" for name, port in named if port and not port_is_free(config.host, port)]


def _port_clash(log_path: Path) -> bool:
    """Whether the server failed because a port was taken ("Socket '...' already in use")."""
    return "already in use" in read_tail(log_path)


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




def repository_index(server: LocalTritonServer, timeout_s: float = 5.0) -> list[dict[str, str]]:
    """The server's model repository index (name, version, state, reason) via HTTP."""
    status, body = http_request(
        f"{server.http_base_url}/v2/repository/index",
        timeout_s=timeout_s,
        method="POST",
        headers=server.config.admin_headers(),
    )
    if status != 200:
        raise ServerError(f"the repository index request failed with HTTP {status}: {body[:200]!r}")
    entries = json.loads(body)
    return [{k: str(v) for k, v in entry.items()} for entry in entries]
