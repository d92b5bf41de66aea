"""Errors answered to HTTP clients, in each API's own shape.

Every failure a handler meets becomes one :class:`ApiError` (status, message, kind),
rendered as OpenAI's ``{"error": {"message", "type", "param", "code"}}`` on ``/v1/*``
routes and as TEI's ``{"error", "error_type"}`` elsewhere. Nothing reaches the client
as a traceback: unexpected exceptions are logged here and answered as a plain 500.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass


from hf2triton.errors import ClientError, InvalidInputError, ServerUnavailableError
from hf2triton.gateway.responses import FastJSONResponse

logger = logging.getLogger(__name__)

OPENAI, TEI = "openai", "tei"

# TEI's error types (text-embeddings-inference ``ErrorType``), by the status we answer with.
_TEI_TYPES = {400: "Validation", 401: "Validation", 404: "Validation", 405: "Validation", 413: "Validation",
              422: "Tokenizer", 502: "Backend", 503: "Unhealthy", 504: "Backend", 500: "Backend"}
# OpenAI's error ``type`` values.
_OPENAI_TYPES = {401: "authentication_error", 404: "not_found_error", 503: "service_unavailable",
                 502: "api_error", 504: "api_error", 500: "api_error"}


@dataclass(frozen=True)
class ApiError(Exception):
    """A request that cannot be answered: HTTP ``status``, a message naming the problem."""

    status: int
    message: str
    param: str | None = None  # the request field at fault, when there is one
    code: str | None = None  # a machine-readable reason, e.g. "model_not_found"

    def __str__(self) -> str:
        return self.message


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_request") -> ApiError:
    return ApiError(400, message, param, code)


def too_large(message: str, param: str | None = None) -> ApiError:
    return ApiError(413, message, param, "too_large")


def model_not_found(name: str, served: list[str]) -> ApiError:
    listing = ", ".join(sorted(served)) or "none"
    return ApiError(404, f"model {name!r} is not served (served models: {listing})", "model", "model_not_found")


def from_client_error(exc: ClientError) -> ApiError:
    """Map the client's error tree: bad input 400 (413 over a size limit), Triton down 503, else 502."""
    if isinstance(exc, InvalidInputError):
        message = str(exc)
        return ApiError(413 if "over the limit" in message else 400, message, "input", "invalid_input")
    if isinstance(exc, ServerUnavailableError):
        return ApiError(503, str(exc), None, "triton_unavailable")
    return ApiError(502, str(exc), None, "triton_error")


def render(error: ApiError, flavour: str, headers: dict[str, str] | None = None) -> FastJSONResponse:
    """The error response in the shape of ``flavour`` (:data:`OPENAI` or :data:`TEI`)."""
    if flavour == OPENAI:
        kind = _OPENAI_TYPES.get(error.status, "invalid_request_error")
        body: dict = {"error": {"message": error.message, "type": kind, "param": error.param, "code": error.code}}
    else:
        body = {"error": error.message, "error_type": _TEI_TYPES.get(error.status, "Validation")}
    return FastJSONResponse(body, status_code=error.status, headers=headers)


def flavour_of(path: str) -> str:
    """OpenAI's shape on ``/v1/*`` (embeddings, models, Cohere/Jina rerank); TEI's elsewhere."""
    return OPENAI if path.startswith("/v1/") else TEI


def unexpected(exc: BaseException, path: str) -> FastJSONResponse:
    """A bug, not a bad request: log the traceback here, answer without it."""
    logger.error("unexpected error answering %s", path, exc_info=exc)
    return render(ApiError(500, f"internal error ({type(exc).__name__}); see the gateway log"), flavour_of(path))
