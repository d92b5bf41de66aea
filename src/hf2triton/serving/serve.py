"""``hf2triton serve``: run the bundled tritonserver in the foreground until Ctrl-C.

Signals only set a flag; every wait (start-up, the health loop, a restart's backoff and
start-up) polls it at least every 0.1 s to 1 s, and the shutdown that follows is bounded
(:data:`SHUTDOWN_GRACE_S` for in-flight requests, then the server's process group is
killed), so Ctrl-C or SIGTERM ends ``serve`` within 5 s in every state. A flag rather than
a raised exception or a ``threading.Event``: the handler runs on the main thread, possibly
in the middle of ``Event.wait()`` or a lock, where raising or ``Event.set()`` deadlocks.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass
from types import FrameType
from typing import Callable, Protocol

from hf2triton.errors import ServerError
from hf2triton.serving.config import RESTRICTED_APIS, RESTRICTED_KEY_HEADER, ServerConfig
from hf2triton.serving.process import LocalTritonServer, repository_index
from hf2triton.serving.watch import SupervisionPolicy, supervise

__all__ = ["SHUTDOWN_GRACE_S", "Companion", "serve"]

logger = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 2.0  # in-flight requests get this long after Ctrl-C; then SIGTERM (Triton: exit now)
_Handler = Callable[[int, FrameType | None], object] | int | None


class Companion(Protocol):
    """Something that runs beside the server and must follow its restarts (ports of 0 move)."""

    def follow(self, server: LocalTritonServer) -> None: ...

    def stop(self) -> None: ...


@dataclass
class _StopFlag:
    """Set by the signal handler, polled by every wait."""

    requested: bool = False

    def __call__(self) -> bool:
        return self.requested


def serve(
    config: ServerConfig,
    ready_timeout_s: float = 120,
    health_watch: bool = True,
    policy: SupervisionPolicy | None = None,
    companion: Companion | None = None,
) -> int:
    """Run the server until SIGINT or SIGTERM (Ctrl-C); return an exit status.

    Logs the endpoints, the READY models and the log path once ready. Returns 0 after a
    requested shutdown, 130 when start-up was interrupted, the server's own (non-zero)
    status if it died by itself, and 1 when restarts gave up (the reason is logged).
    With ``health_watch``, a python-backend stub that dies makes it restart the server
    as ``policy`` says (see :mod:`hf2triton.serving.watch`). A ``companion`` (e.g. the
    gateway of ``serve --gateway-port``) is told each time the server is ready (at start
    and after each restart) and stopped before the server. Raises ServerError when the
    server does not become ready.
    """
    policy = policy or SupervisionPolicy(ready_timeout_s=ready_timeout_s)
    stop = _StopFlag()
    server = LocalTritonServer(config)
    previous = _install_handlers(stop)
    try:
        try:
            server.start(ready_timeout_s, cancel=stop)
        except ServerError:
            if stop():
                logger.info("start-up interrupted")
                return 130
            raise
        def on_ready(ready: LocalTritonServer) -> None:
            _log_endpoints(ready)
            if companion is not None:
                companion.follow(ready)

        result = supervise(server, policy if health_watch else None, stop, on_ready=on_ready)
        if result.exit_status != 0:
            logger.error("%s", result.reason)
        return result.exit_status
    finally:
        if companion is not None:
            companion.stop()
        server.stop(timeout_s=SHUTDOWN_GRACE_S, term_timeout_s=0.5, reap_s=0.5)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _install_handlers(stop: _StopFlag) -> dict[int, _Handler]:
    """SIGINT and SIGTERM set ``stop`` (main thread only: Python delivers signals there)."""

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        if not stop.requested:
            logger.info("received %s, shutting down", signal.Signals(signum).name)
        stop.requested = True

    previous: dict[int, _Handler] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, request_stop)
    return previous


def _tls_note(config: ServerConfig) -> str:
    if config.grpc_use_ssl_mutual:
        return " (TLS, client certificates required)"
    return " (TLS)" if config.grpc_use_ssl else ""


def _log_endpoints(server: LocalTritonServer) -> None:
    logger.info("HTTP     %s", server.http_base_url)
    logger.info("gRPC     %s%s", server.grpc_url, _tls_note(server.config))
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
    elif server.config.model_control_mode == "explicit":
        logger.warning("model control is open: anyone who reaches %s can load and unload models", server.http_base_url)
    logger.info("server log: %s", server.log_path)
    logger.info("tritonserver pid %d is ready; press Ctrl-C to stop", server.pid)
