"""OpenAI-compatible routes: ``POST /v1/embeddings``, ``GET /v1/models``, Cohere/Jina ``POST /v1/rerank``.

Shapes follow OpenAI's API reference (embeddings: ``model``, ``input`` string or list
of strings, ``encoding_format`` float|base64, ``dimensions``, ``user`` ignored) and
Cohere's / Jina's rerank (``query``, ``documents`` strings or ``{"text"}``, ``top_n``,
``return_documents``). Texts longer than the model's max sequence length are
truncated as sentence-transformers does (OpenAI's API has no switch for it).
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import numpy as np

from starlette.requests import Request

from hf2triton.client.results import rank_order
from hf2triton.gateway.errors import bad_request
from hf2triton.gateway.inputs import check_text_sizes, field, read_json, require_task, text_list, top_n
from hf2triton.gateway.responses import FastJSONResponse
from hf2triton.gateway.service import TASK_EMBEDDINGS, renormalised
from hf2triton.gateway.state import GatewayState

ENCODING_FORMATS = ("float", "base64")


def _state(request: Request) -> GatewayState:
    return request.app.state.gateway


async def embeddings(request: Request) -> FastJSONResponse:
    state = _state(request)
    body = await read_json(request, state.settings.max_request_bytes)
    name = field(body, "model", str)
    raw_input = body.get("input")
    if raw_input is None:
        raise bad_request("'input' is required", "input")
    if isinstance(raw_input, list) and raw_input and all(isinstance(x, (int, list)) for x in raw_input) \
            and not any(isinstance(x, bool) for x in raw_input):
        raise bad_request("token-id input is not supported: send 'input' as a string or a list of strings", "input")
    texts = text_list(raw_input, "input", state.settings.max_inputs)
    encoding = field(body, "encoding_format", str, "float")
    if encoding not in ENCODING_FORMATS:
        raise bad_request(f"'encoding_format' must be one of {', '.join(ENCODING_FORMATS)}, not {encoding!r}",
                          "encoding_format")
    dimensions = field(body, "dimensions", int, None)
    served = await state.service.catalog.get(name)
    require_task(served.info, TASK_EMBEDDINGS, "/v1/embeddings")
    check_text_sizes(texts, served.info, "input")
    result = await state.service.embed(served, texts)
    vectors = result.vectors
    if dimensions is not None:
        if not 1 <= dimensions <= vectors.shape[1]:
            raise bad_request(f"'dimensions' must be between 1 and {vectors.shape[1]} for model {name!r}, "
                              f"not {dimensions}", "dimensions")
        vectors = renormalised(vectors, dimensions)
    if encoding == "base64":  # little-endian float32, as OpenAI's SDK decodes it
        encoded: list[Any] = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in vectors]
    else:
        encoded = list(np.ascontiguousarray(vectors, dtype=np.float32))  # orjson writes float32 rows exactly
    tokens = sum(result.tokens)
    return FastJSONResponse({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
        "model": name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })


async def models(request: Request) -> FastJSONResponse:
    state = _state(request)
    served = await state.service.catalog.refresh()
    return FastJSONResponse({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0, "owned_by": "hf2triton", "task": m.info.task,
         "max_sequence_length": m.info.max_sequence_length, "max_batch_size": m.info.max_batch_size}
        for name, m in sorted(served.items())
    ]})


def _documents(value: Any, max_inputs: int) -> list[str]:
    """Cohere and Jina accept strings or ``{"text": ...}`` objects."""
    if isinstance(value, list):
        value = [item.get("text") if isinstance(item, dict) else item for item in value]
    return text_list(value, "documents", max_inputs)


async def rerank(request: Request) -> FastJSONResponse:
    state = _state(request)
    body = await read_json(request, state.settings.max_request_bytes)
    name = field(body, "model", str, None)
    query = field(body, "query", str)
    documents = _documents(body.get("documents"), state.settings.max_inputs)
    count = top_n(body, len(documents))
    return_documents = field(body, "return_documents", bool, False)
    served, scores, tokens = await state.service.rerank_route(name, state.settings.default_model, "/v1/rerank",
                                                              query, documents, "documents")
    results = []
    for i in rank_order(scores, count):
        item: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
        if return_documents:
            item["document"] = {"text": documents[i]}
        results.append(item)
    return FastJSONResponse({"id": str(uuid.uuid4()), "model": served.info.name, "results": results,
                         "usage": {"total_tokens": sum(tokens)}})


__all__ = ["embeddings", "models", "rerank"]
