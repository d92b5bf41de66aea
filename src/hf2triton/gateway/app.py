"""The Starlette application: routes, errors in each API's shape, auth, metrics, access log.

``create_app(settings)`` builds it; the lifespan opens the one gRPC connection to
Triton, discovers the served ensembles (a Triton that is down is logged, not fatal:
requests answer 503 until it is up) and refreshes them on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hf2triton.errors import ClientError
from hf2triton.gateway import openai_api, tei_api
from hf2triton.gateway.catalog import ModelCatalog
from hf2triton.gateway.errors import ApiError, flavour_of, from_client_error, render, unexpected
from hf2triton.gateway.metrics import GatewayMetrics
from hf2triton.gateway.responses import FastJSONResponse
from hf2triton.gateway.service import GatewayService
from hf2triton.gateway.settings import GatewaySettings
from hf2triton.gateway.state import GatewayState
from hf2triton.gateway.triton import TritonConnection

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("hf2triton.gateway.access")

OPEN_PATHS = frozenset({"/health", "/metrics"})  # answered without the API key (probes, Prometheus)
Handler = Callable[[Request], Awaitable[Response]]


def guarded(handler: Handler) -> Handler:
    """Answer every failure of ``handler`` in the route's API shape; never a traceback."""

    async def route(request: Request) -> Response:
        try:
            return await handler(request)
        except ApiError as exc:
            return render(exc, flavour_of(request.url.path))
        except ClientError as exc:
            return render(from_client_error(exc), flavour_of(request.url.path))
        except Exception as exc:  # a bug: logged with its traceback, answered without it
            return unexpected(exc, request.url.path)

    return route


async def health(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    try:
        ready = await state.service.connection.server_ready()
    except ClientError as exc:
        return render(ApiError(503, f"Triton is unreachable: {exc}"), "tei")
    if not ready:
        return render(ApiError(503, "Triton is not ready"), "tei")
    return FastJSONResponse({"status": "ok", "models": sorted(state.service.catalog.models)})


async def metrics(request: Request) -> Response:
    state: GatewayState = request.app.state.gateway
    state.metrics.models.set(len(state.service.catalog.models))
    body, content_type = state.metrics.exposition()
    return Response(body, media_type=content_type)


ROUTES = (
    ("/v1/embeddings", openai_api.embeddings, "POST"),
    ("/v1/models", openai_api.models, "GET"),
    ("/v1/rerank", openai_api.rerank, "POST"),
    ("/embed", tei_api.embed, "POST"),
    ("/predict", tei_api.predict, "POST"),
    ("/rerank", tei_api.rerank, "POST"),
    ("/health", health, "GET"),
    ("/metrics", metrics, "GET"),
)
ENDPOINTS = frozenset(path for path, _, _ in ROUTES)


class Observed:
    """ASGI middleware: bearer-token auth, Prometheus metrics and one structured access-log line per request.

    Written as plain ASGI (not ``BaseHTTPMiddleware``) to add as little latency as possible.
    """

    def __init__(self, app: ASGIApp, settings: GatewaySettings, metrics_: GatewayMetrics) -> None:
        self.app = app
        self._expected = f"Bearer {settings.api_key}".encode() if settings.api_key else None
        self._metrics = metrics_

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"  # bounded label values
        status = 500
        sent = 0

        async def observed_send(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            if self._expected is not None and path not in OPEN_PATHS and not self._authorised(scope):
                response = render(ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                           None, "invalid_api_key"), flavour_of(path),
                                  headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, observed_send)
            else:
                await self.app(scope, receive, observed_send)
        finally:
            elapsed = time.perf_counter() - start
            self._metrics.observe(endpoint, status, elapsed)
            if access_logger.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("", 0)
                access_logger.info(orjson.dumps({
                    "method": scope["method"], "path": path, "status": status, "bytes": sent,
                    "duration_ms": round(elapsed * 1000, 3), "client": client[0],
                }).decode())

    def _authorised(self, scope: Scope) -> bool:
        for key, value in scope["headers"]:
            if key == b"authorization":
                return hmac.compare_digest(value, self._expected or b"")
        return False


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 (no such route) and 405 (wrong method), in the route's API shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = f"no route {request.method} {request.url.path}" if status == 404 else \
        f"{request.method} is not allowed on {request.url.path}" if status == 405 else str(exc)
    return render(ApiError(status, detail, None, "not_found" if status == 404 else "invalid_request"),
                  flavour_of(request.url.path))


def create_app(settings: GatewaySettings) -> Starlette:
    """The gateway as an ASGI app (serve it with uvicorn, or see :func:`hf2triton.gateway.run_gateway`)."""
    connection = TritonConnection(settings.triton_url, settings.request_timeout_s, settings.triton_admin_key,
                                  settings.max_concurrent_chunks, tls=settings.triton_tls)
    state = GatewayState(settings, GatewayService(connection, ModelCatalog(connection, settings.model_repository)),
                         GatewayMetrics())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            served = await state.service.catalog.refresh()
            logger.info("gateway for Triton at %s serving %s", settings.triton_url, sorted(served) or "no models yet")
        except ClientError as exc:
            logger.warning("Triton at %s is not reachable yet (%s); requests answer 503 until it is",
                           settings.triton_url, exc)
        refresher = asyncio.create_task(state.service.catalog.run_refresh_loop(settings.refresh_interval_s))
        try:
            yield
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            await connection.close()

    app = Starlette(
        routes=[Route(path, guarded(handler), methods=[method]) for path, handler, method in ROUTES],
        exception_handlers={404: _http_error, 405: _http_error},
        lifespan=lifespan,
    )
    app.state.gateway = state
    app.add_middleware(Observed, settings=settings, metrics_=state.metrics)
    return app
