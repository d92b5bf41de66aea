"""Reading and checking request bodies: size limit, JSON, field types, text limits.

Each check raises :class:`~hf2triton.gateway.errors.ApiError` naming the field and the
limit, so handlers stay a straight line from request to answer.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from hf2triton.client import ModelInfo
from hf2triton.gateway.errors import ApiError, bad_request, too_large
from hf2triton.gateway.responses import loads as parse_json

_MISSING = object()


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object, refused (413) beyond ``max_bytes`` before it is all read."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise too_large(f"the request body is {int(declared)} bytes, over the limit of {max_bytes} bytes")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > max_bytes:
            raise too_large(f"the request body is over the limit of {max_bytes} bytes")
    if not body:
        raise bad_request("the request body is empty; send a JSON object")
    try:
        document = parse_json(bytes(body))
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise bad_request(f"the request body must be a JSON object, not {type(document).__name__}")
    return document


def field(body: dict[str, Any], name: str, kinds: type | tuple[type, ...], default: Any = _MISSING) -> Any:
    """``body[name]`` checked against ``kinds`` (``null`` counts as absent); missing and required → 400."""
    value = body.get(name)
    if value is None:
        if default is _MISSING:
            raise bad_request(f"'{name}' is required", name)
        return default
    # JSON true/false are bools, which Python also counts as ints: keep them apart.
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise bad_request(f"'{name}' must be {_kind_names(kinds)}, not a boolean", name)
    if not isinstance(value, kinds):
        raise bad_request(f"'{name}' must be {_kind_names(kinds)}, not {_json_type(value)}", name)
    return value


def _kind_names(kinds: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "a boolean", list: "a list", dict: "an object",
             float: "a number"}
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
            bool: "a boolean"}.get(type(value), type(value).__name__)


def text_list(value: Any, name: str, max_inputs: int) -> list[str]:
    """A string or a non-empty list of strings, at most ``max_inputs`` of them."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise bad_request(f"'{name}' must be a string or a list of strings, not {_json_type(value)}", name)
    if not value:
        raise bad_request(f"'{name}' is an empty list; send at least one text", name)
    if len(value) > max_inputs:
        raise too_large(f"'{name}' has {len(value)} texts, over the limit of {max_inputs} per request", name)
    wrong = [i for i, item in enumerate(value) if not isinstance(item, str)]
    if wrong:
        shown = ", ".join(f"{name}[{i}] is {_json_type(value[i])}" for i in wrong[:5])
        raise bad_request(f"'{name}' must hold only strings: {shown}", name)
    return value


def top_n(body: dict[str, Any], count: int) -> int:
    """A rerank request's ``top_n``: 1 or more, default every document."""
    value = field(body, "top_n", int, count)
    if value < 1:
        raise bad_request(f"'top_n' must be >= 1, not {value}", "top_n")
    return value


def check_text_sizes(texts: list[str], info: ModelInfo, name: str) -> None:
    """Refuse (413) texts over the model's published byte limit, naming each."""
    limit = info.max_text_bytes
    if limit <= 0:
        return
    over = [(i, n) for i, n in enumerate(len(t.encode("utf-8")) for t in texts) if n > limit]
    if over:
        shown = "; ".join(f"{name}[{i}] is {n} UTF-8 bytes" for i, n in over[:5])
        more = f" (and {len(over) - 5} more)" if len(over) > 5 else ""
        raise too_large(f"{shown}{more}: over model {info.name!r}'s limit of {limit} bytes per text", name)


def require_task(info: ModelInfo, task: str, route: str) -> None:
    if info.task != task:
        raise ApiError(400, f"model {info.name!r} serves task {info.task!r}; {route} needs a {task} model",
                       "model", "wrong_task")
