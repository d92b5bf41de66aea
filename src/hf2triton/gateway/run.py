"""Running the gateway: in the foreground (``hf2triton gateway``) or in a thread beside a server.

``run_gateway(settings)`` blocks until Ctrl-C. ``start_gateway(settings)`` returns a
:class:`GatewayThread` already listening, for ``hf2triton serve --gateway-port`` and for
tests; ``stop()`` (or the context manager) shuts it down and joins it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import uvicorn

from hf2triton.errors import OptionsError, ServerError
from hf2triton.gateway.app import create_app
from hf2triton.gateway.settings import GatewaySettings
from hf2triton.serving import LocalTritonServer, ServerConfig

logger = logging.getLogger(__name__)


def _server(settings: GatewaySettings) -> uvicorn.Server:
    # log_config=None keeps the caller's logging; uvicorn's own access log is off because
    # the app writes a structured one (hf2triton.gateway.access). http="auto" picks httptools
    # (a dependency: ~0.3 ms less CPU per request than h11); the loop stays plain asyncio,
    # which grpc.aio supports (uvloop measured no faster here).
    config = uvicorn.Config(create_app(settings), host=settings.host, port=settings.port, log_config=None,
                            access_log=False, lifespan="on", loop="asyncio", http="auto", timeout_graceful_shutdown=5,
                            limit_concurrency=None, server_header=False)
    return uvicorn.Server(config)


def run_gateway(settings: GatewaySettings) -> int:
    """Serve until interrupted; 0 on a clean stop, 1 when the port could not be bound."""
    logger.info("gateway on %s → Triton gRPC %s%s", settings.base_url, settings.triton_url,
                " (API key required)" if settings.api_key else "")
    server = _server(settings)
    server.run()
    return 0 if server.started else 1


class GatewayThread:
    """A gateway served by uvicorn in a daemon thread of this process."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self._server = _server(settings)
        self._thread = threading.Thread(target=self._server.run, name="hf2triton-gateway", daemon=True)

    @property
    def url(self) -> str:
        return self.settings.base_url

    @property
    def port(self) -> int:
        """The bound port (the real one when settings asked for 0)."""
        for server in getattr(self._server, "servers", []) or []:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.settings.port

    def start(self, timeout_s: float = 30.0) -> GatewayThread:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise ServerError(f"the gateway could not start on {self.settings.host}:{self.settings.port} "
                                  "(is the port in use? see the log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"the gateway did not start within {timeout_s:g} s")
            time.sleep(0.02)
        if self.settings.port == 0:
            import dataclasses

            self.settings = dataclasses.replace(self.settings, port=self.port)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def __enter__(self) -> GatewayThread:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def start_gateway(settings: GatewaySettings, timeout_s: float = 30.0) -> GatewayThread:
    """A gateway listening in a background thread (e.g. beside ``LocalTritonServer``)."""
    return GatewayThread(settings).start(timeout_s)


def start_beside(server: LocalTritonServer, port: int, timeout_s: float = 30.0, **overrides: object) -> GatewayThread:
    """A gateway for a running :class:`~hf2triton.serving.LocalTritonServer` (``hf2triton serve --gateway-port``).

    It talks to the server's gRPC port, counts tokens with the served repository's
    tokenizers, uses the server's admin key for the repository index, and reads the
    API key from :data:`~hf2triton.gateway.settings.API_KEY_ENV`.
    """
    config = server.config
    settings = GatewaySettings.from_environment(
        **{"triton_url": server.grpc_url, "port": port, "model_repository": config.model_repository, **overrides})
    if settings.triton_admin_key is None and getattr(config, "restricted_api_key", None):
        import dataclasses

        settings = dataclasses.replace(settings, triton_admin_key=config.restricted_api_key)
    return start_gateway(settings, timeout_s)


@dataclass
class GatewayBeside:
    """The gateway of ``hf2triton serve --gateway-port``: a :class:`~hf2triton.serving.serve.Companion`
    started once the server is ready, restarted only when a server restart moved the gRPC port
    (ports of 0 are re-picked)."""

    port: int
    thread: GatewayThread | None = None
    triton_url: str | None = None

    def follow(self, server: LocalTritonServer) -> None:
        if self.thread is not None and self.triton_url == server.grpc_url:
            return
        self.stop()
        self.thread = start_beside(server, port=self.port, **gateway_tls(server.config))
        self.triton_url = server.grpc_url
        logger.info("gateway  %s (OpenAI /v1/embeddings; TEI /embed, /predict, /rerank)", self.thread.url)

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.stop()
            self.thread = None


def gateway_tls(config: ServerConfig) -> dict[str, Any]:
    """GatewaySettings fields for reaching this server's gRPC endpoint: over TLS when it uses TLS.

    The gateway beside the server trusts the server's own certificate, which is right for a
    self-signed one; it has no client certificate, so mutual TLS is refused up front
    (:func:`check_gateway_beside`).
    """
    if not config.grpc_tls:
        return {}
    return {"triton_ssl": True, "triton_root_certificates": config.grpc_server_cert}


def check_gateway_beside(config: ServerConfig) -> None:
    """Raise OptionsError when a gateway beside this server could not reach it."""
    if config.grpc_use_ssl_mutual:
        raise OptionsError("--gateway-port cannot be combined with --grpc-use-ssl-mutual: the gateway beside the "
                           "server has no client certificate; run `hf2triton gateway --triton-ssl "
                           "--triton-private-key ... --triton-certificate-chain ...` separately")
