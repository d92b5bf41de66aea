"""The gateway's settings: one frozen record, validated once, built by the CLI or by callers."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from hf2triton.contract import DEFAULT_HOST, local_url
from hf2triton.errors import OptionsError
from hf2triton.serving.config import ADMIN_KEY_ENV  # Triton's restricted-API key, as `hf2triton serve` reads it

if TYPE_CHECKING:
    from hf2triton.client.transport import TLSOptions

API_KEY_ENV = "HF2TRITON_GATEWAY_API_KEY"  # when set, every endpoint but /health and /metrics needs the bearer token


@dataclass(frozen=True)
class GatewaySettings:
    """How the gateway listens, which Triton it fronts and the limits it enforces.

    ``model_repository``: the repository Triton serves, when the gateway runs beside
    it; token counts (``usage``) then come from each ensemble's own ``tokenizer.json``.
    Without it, counts come from the ensemble's tokenizer step over gRPC (see
    :mod:`hf2triton.gateway.tokens`). ``api_key``/``triton_admin_key`` are secrets:
    never printed (``repr=False``) nor logged.
    """

    triton_url: str = local_url("grpc")  # gRPC host:port
    host: str = DEFAULT_HOST
    port: int = 8080
    model_repository: Path | None = None
    default_model: str | None = None  # for TEI routes, which name no model, when several are served
    api_key: str | None = field(default=None, repr=False)
    triton_admin_key: str | None = field(default=None, repr=False)
    max_request_bytes: int = 4 * 1024 * 1024
    max_inputs: int = 512  # texts (or documents) per request
    request_timeout_s: float = 60.0
    refresh_interval_s: float = 10.0  # how often served models are rediscovered (loads/unloads)
    max_concurrent_chunks: int = 16  # gRPC requests in flight for one HTTP request's chunks
    # gRPC TLS to Triton (PEM files; no root certificates = the system's trust store; a client
    # certificate, key and chain together, for a server started with --grpc-use-ssl-mutual).
    triton_ssl: bool = False
    triton_root_certificates: Path | None = None
    triton_private_key: Path | None = None
    triton_certificate_chain: Path | None = None

    def __post_init__(self) -> None:
        if self.model_repository is not None:
            object.__setattr__(self, "model_repository", Path(self.model_repository))
        problems: list[str] = []
        if not self.triton_url or "://" in self.triton_url or ":" not in self.triton_url:
            problems.append(f"triton_url must be HOST:GRPC_PORT, not {self.triton_url!r}")
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be in 0..65535, not {self.port}")
        if not self.host:
            problems.append("host must not be empty")
        for name in ("max_request_bytes", "max_inputs", "max_concurrent_chunks"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, not {getattr(self, name)}")
        for name in ("request_timeout_s", "refresh_interval_s"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0, not {getattr(self, name)}")
        if self.api_key is not None and len(self.api_key) < 8:
            problems.append("the API key must be 8 or more characters")
        if not problems:
            try:
                self.triton_tls  # noqa: B018 (validates the TLS files and their combination)
            except OptionsError as error:
                problems.append(str(error))
        if problems:
            raise OptionsError("invalid gateway settings: " + "; ".join(problems))

    @classmethod
    def from_environment(cls, api_key_env: str = API_KEY_ENV, admin_key_env: str = ADMIN_KEY_ENV,
                         **kwargs: object) -> GatewaySettings:
        """Settings with the API key and Triton's admin key read from environment variables."""
        return cls(api_key=os.environ.get(api_key_env) or None,
                   triton_admin_key=os.environ.get(admin_key_env) or None, **kwargs)  # type: ignore[arg-type]

    @property
    def triton_tls(self) -> TLSOptions | None:
        """TLS for the gRPC connection to Triton, None for plain gRPC (raises OptionsError on bad files)."""
        files = (self.triton_root_certificates, self.triton_private_key, self.triton_certificate_chain)
        if not self.triton_ssl and all(path is None for path in files):
            return None  # plain: no need to import the client (it brings numpy)
        from hf2triton.client.transport import parse_endpoint

        return parse_endpoint(self.triton_url, "grpc", ssl=self.triton_ssl, root_certificates=files[0],
                              private_key=files[1], certificate_chain=files[2]).tls

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"
