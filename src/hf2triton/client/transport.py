"""One adapter over tritonclient's four clients (gRPC/HTTP × blocking/asyncio).

:class:`Client`, :class:`AsyncClient` and the perf sweep all talk to Triton through a
:class:`Transport`: it builds the connection for an :class:`Endpoint` (TLS included),
builds requests, adds the protocol's keyword arguments and maps tritonclient's
exceptions to :class:`~hf2triton.errors.ClientError`. Its server calls return what
tritonclient returns: a value on a blocking transport, an awaitable on an asyncio
one. That is the only difference the clients keep.

tritonclient is imported when a transport connects, so importing this module is cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl as ssl_module
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from hf2triton import contract
from hf2triton.errors import ClientError, Hf2TritonError, InvalidInputError, OptionsError, ServerUnavailableError

logger = logging.getLogger(__name__)

PROTOCOLS = contract.PROTOCOLS
DEFAULT_PORTS = {protocol: contract.DEFAULT_PORTS[protocol] for protocol in PROTOCOLS}  # where `hf2triton serve` listens
_PLAIN_SCHEMES = ("http://", "grpc://")
_TLS_SCHEMES = ("https://",)


# --------------------------------------------------------------------------- endpoint


@dataclass(frozen=True)
class TLSOptions:
    """TLS settings; paths are PEM files. No root certificates = the system's trust store.

    ``private_key`` and ``certificate_chain`` (a client certificate, for servers that
    verify clients) go together.
    """

    root_certificates: Path | None = None
    private_key: Path | None = None
    certificate_chain: Path | None = None

    def grpc_kwargs(self) -> dict[str, Any]:
        """tritonclient.grpc's ``ssl``/certificate arguments (it reads the files itself)."""
        return {
            "ssl": True,
            "root_certificates": _str(self.root_certificates),
            "private_key": _str(self.private_key),
            "certificate_chain": _str(self.certificate_chain),
        }

    def http_options(self) -> dict[str, str]:
        """geventhttpclient's ``ssl_options`` for the blocking HTTP client."""
        options = {"ca_certs": _str(self.root_certificates), "keyfile": _str(self.private_key),
                   "certfile": _str(self.certificate_chain)}
        return {key: value for key, value in options.items() if value}

    def ssl_context(self) -> ssl_module.SSLContext:
        """An ``ssl.SSLContext`` (verifying the server) for the asyncio HTTP client."""
        context = ssl_module.create_default_context(cafile=_str(self.root_certificates))
        if self.certificate_chain is not None:
            context.load_cert_chain(str(self.certificate_chain), _str(self.private_key))
        return context


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


@dataclass(frozen=True)
class Endpoint:
    """Where a Triton server listens: ``address`` (host:port), protocol, and TLS (None = plain)."""

    address: str
    protocol: str
    tls: TLSOptions | None = None

    def __str__(self) -> str:
        return f"{'https://' if self.tls and self.protocol == 'http' else ''}{self.address}"


def _tls_file(option: str, value: str | Path | None) -> Path | None:
    if value is None or value == "":
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise OptionsError(f"{option} {str(value)!r} is not a file (expected a PEM file)")
    return path


def parse_endpoint(
    url: str | None,
    protocol: str = "grpc",
    *,
    ssl: bool = False,
    root_certificates: str | Path | None = None,
    private_key: str | Path | None = None,
    certificate_chain: str | Path | None = None,
) -> Endpoint:
    """Validate a server address and TLS options; every mistake is an :class:`OptionsError`.

    ``url`` is ``host:port``, optionally with ``http://``/``grpc://`` (plain) or
    ``https://`` (TLS, like ``ssl=True``); empty means ``127.0.0.1`` and the
    protocol's default port (8001 gRPC, 8000 HTTP).
    """
    if protocol not in PROTOCOLS:
        raise OptionsError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    address = url or contract.local_url(protocol)
    for scheme in _PLAIN_SCHEMES + _TLS_SCHEMES:
        if address.startswith(scheme):
            address, ssl = address[len(scheme) :], ssl or scheme in _TLS_SCHEMES
            break
    address = address.rstrip("/")
    if "://" in address or "/" in address:
        raise OptionsError(
            f"url must be host:port, http://host:port or https://host:port (no path), got {url!r}"
        )
    try:
        parts = urlsplit("//" + address)
        port = parts.port
    except ValueError:
        port, parts = -1, None
    if parts is None or not parts.hostname or port == -1 or (port is not None and not 1 <= port <= 65535):
        raise OptionsError(f"url {url!r} is not host:port with a port in 1..65535")
    files = {
        "root_certificates": _tls_file("root_certificates", root_certificates),
        "private_key": _tls_file("private_key", private_key),
        "certificate_chain": _tls_file("certificate_chain", certificate_chain),
    }
    if (files["private_key"] is None) != (files["certificate_chain"] is None):
        raise OptionsError("a client certificate needs both private_key and certificate_chain")
    if not ssl:
        given = [name for name, path in files.items() if path is not None]
        if given:
            raise OptionsError(f"{', '.join(given)} need TLS: pass ssl=True or an https:// url")
        return Endpoint(address, protocol)
    return Endpoint(address, protocol, TLSOptions(**files))


# --------------------------------------------------------------------------- errors

_INVALID_STATUSES = {"400", "StatusCode.INVALID_ARGUMENT"}
_UNAVAILABLE_STATUSES = {"503", "StatusCode.UNAVAILABLE"}
_NOT_FOUND_STATUSES = {"404", "StatusCode.NOT_FOUND"}
_TIMEOUT_STATUSES = {"StatusCode.DEADLINE_EXCEEDED", "504"}
_NOT_READY_HINTS = ("unknown model", "is not ready", "no available version", "is not found")


def _where(url: str | None, model: str | None) -> str:
    parts = []
    if model:
        parts.append(f"model {model!r}")
    if url:
        parts.append(f"at {url}")
    return " ".join(parts)


def to_client_error(exc: BaseException, *, url: str | None = None, model: str | None = None) -> ClientError:
    """Map an exception from tritonclient (or the transport below it) to our tree.

    HTTP 400 / gRPC INVALID_ARGUMENT → :class:`InvalidInputError` with the server's
    message; refused connections, HTTP 503 / gRPC UNAVAILABLE and unknown or
    unready models → :class:`ServerUnavailableError`; anything else →
    :class:`ClientError`. The caller chains it: ``raise to_client_error(e) from e``.
    """
    if isinstance(exc, ClientError):
        return exc
    where = _where(url, model)
    suffix = f" ({where})" if where else ""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        message = str(exc.message() or exc)
        lowered = message.lower()
        if status in _INVALID_STATUSES and not any(hint in lowered for hint in _NOT_READY_HINTS):
            return InvalidInputError(message)
        if (
            status in _UNAVAILABLE_STATUSES
            or status in _NOT_FOUND_STATUSES
            or any(hint in lowered for hint in _NOT_READY_HINTS)
        ):
            return ServerUnavailableError(f"Triton server or model unavailable{suffix}: {message}")
        if status in _TIMEOUT_STATUSES:
            return ClientError(f"request timed out{suffix}: {message}")
        return ClientError(f"request failed{suffix}: [{status or 'no status'}] {message}")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return ClientError(f"request timed out{suffix}: {exc or type(exc).__name__}")
    if isinstance(exc, (ConnectionError, OSError)) or _is_aiohttp_connection_error(exc):
        return ServerUnavailableError(f"cannot connect to Triton{suffix}: {exc}")
    return ClientError(f"request failed{suffix}: {type(exc).__name__}: {exc}")


def _is_aiohttp_connection_error(exc: BaseException) -> bool:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp comes with tritonclient[http]
        return False
    return isinstance(exc, aiohttp.ClientConnectionError)


# --------------------------------------------------------------------------- transport


@dataclass(frozen=True)
class Request:
    """One inference request, built once: the ``TEXT`` input and the outputs asked for."""

    inputs: tuple[Any, ...]
    outputs: tuple[Any, ...]
    output_names: tuple[str, ...]
    parameters: tuple[tuple[str, Any], ...] = ()  # KServe v2 request parameters (prompt_name, dimensions)


class Transport:
    """One tritonclient connection to ``model`` at ``endpoint``.

    ``asynchronous`` picks ``tritonclient.*.aio``; ``connections`` bounds the HTTP
    connection pool (gRPC multiplexes one channel). The connection opens on first
    use, so an asyncio transport opens inside the running loop.
    """

    def __init__(
        self, endpoint: Endpoint, model: str, *, asynchronous: bool, timeout_s: float, connections: int = 1
    ) -> None:
        self.endpoint = endpoint
        self.model = model
        self.asynchronous = asynchronous
        self.timeout_s = float(timeout_s)
        self.connections = connections
        self._client: Any = None

    @property
    def module(self) -> ModuleType:
        """``tritonclient.grpc`` or ``tritonclient.http`` (inputs and requested outputs)."""
        if self.endpoint.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module

    @contextlib.contextmanager
    def translated(self) -> Iterator[None]:
        """Re-raise anything but our own errors as a ClientError, chained to the original."""
        try:
            yield
        except Hf2TritonError:
            raise
        except Exception as exc:
            raise to_client_error(exc, url=str(self.endpoint), model=self.model) from exc

    def connection(self) -> Any:
        """The tritonclient client, created on first use."""
        if self._client is None:
            with self.translated():
                self._client = self._connect()
        return self._client

    def _connect(self) -> Any:
        tls, address = self.endpoint.tls, self.endpoint.address
        if self.endpoint.protocol == "grpc":
            if self.asynchronous:
                import tritonclient.grpc.aio as grpc_module
            else:
                import tritonclient.grpc as grpc_module
            return grpc_module.InferenceServerClient(address, **(tls.grpc_kwargs() if tls else {}))
        if self.asynchronous:
            import tritonclient.http.aio as httpaio

            secure = {"ssl": True, "ssl_context": tls.ssl_context()} if tls else {}
            return httpaio.InferenceServerClient(
                address, conn_limit=self.connections, conn_timeout=self.timeout_s, **secure
            )
        import tritonclient.http as http

        secure = {"ssl": True, "ssl_options": tls.http_options()} if tls else {}
        return http.InferenceServerClient(
            address, concurrency=self.connections, connection_timeout=self.timeout_s,
            network_timeout=self.timeout_s, **secure,
        )

    def _kw(self, timeout_s: float | None = None) -> dict[str, Any]:
        # gRPC takes a deadline per call; HTTP's timeouts were set on the connection.
        if self.endpoint.protocol == "grpc":
            return {"client_timeout": self.timeout_s if timeout_s is None else timeout_s}
        return {}

    # Server calls: a value (blocking) or an awaitable (asyncio); wrap them in translated().

    def server_ready(self, timeout_s: float | None = None) -> Any:
        return self.connection().is_server_ready(**self._kw(timeout_s))

    def model_ready(self, timeout_s: float | None = None) -> Any:
        return self.connection().is_model_ready(self.model, **self._kw(timeout_s))

    def model_config(self) -> Any:
        """The model config as a dict (gRPC wraps it as ``{"config": ...}``)."""
        if self.endpoint.protocol == "grpc":
            return self.connection().get_model_config(self.model, as_json=True, **self._kw())
        return self.connection().get_model_config(self.model)

    def statistics(self) -> Any:
        """Every model's inference statistics as a dict."""
        if self.endpoint.protocol == "grpc":
            return self.connection().get_inference_statistics(model_name="", as_json=True)
        return self.connection().get_inference_statistics(model_name="")

    def request(self, batch: np.ndarray, outputs: Sequence[str], pair: np.ndarray | None = None,
                parameters: Mapping[str, Any] | None = None) -> Request:
        """A request sending ``batch`` (BYTES ``[n, 1]``) as ``TEXT`` (and ``pair`` as ``TEXT_PAIR``)
        and asking for ``outputs``, with ``parameters`` as its KServe v2 request parameters."""
        module = self.module
        inputs = []
        for name, array in ((contract.INPUT_TEXT, batch), (contract.INPUT_TEXT_PAIR, pair)):
            if array is not None:
                tensor = module.InferInput(name, list(array.shape), "BYTES")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
        requested = tuple(module.InferRequestedOutput(name) for name in outputs)
        return Request(tuple(inputs), requested, tuple(outputs), tuple(sorted((parameters or {}).items())))

    def infer(self, request: Request) -> Any:
        extra = {"parameters": dict(request.parameters)} if request.parameters else {}
        return self.connection().infer(
            self.model, list(request.inputs), outputs=list(request.outputs), **extra, **self._kw()
        )

    def close(self) -> Any:
        """Close the connection (an awaitable on an asyncio transport, None if never opened)."""
        client, self._client = self._client, None
        return None if client is None else client.close()


def output_arrays(response: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named outputs of an inference response that are present, as numpy arrays."""
    arrays = {name: response.as_numpy(name) for name in names}
    return {name: array for name, array in arrays.items() if array is not None}
