"""Routes shaped like Hugging Face text-embeddings-inference (TEI): ``/embed``, ``/predict``, ``/rerank``.

Bodies and answers follow TEI's OpenAPI types: ``/embed`` takes ``inputs`` (string or
list), ``truncate`` (default false: a text over the max length is refused, 413, as TEI
does), ``normalize`` (default true), ``dimensions``; it answers ``[[float, ...], ...]``.
``/predict`` takes one text, a pair ``[a, b]`` or a batch ``[[a], [b, c], ...]`` and
answers ``[{"label", "score"}, ...]`` (sorted, best first) per text. ``/rerank`` takes
``query``, ``texts``, ``return_text``, ``raw_scores``, ``top_n``. TEI serves one model
and names none; here an optional ``model`` field picks one, else ``--default-model``,
else the only model of the route's task.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from starlette.requests import Request

from hf2triton.client.results import rank_order
from hf2triton.gateway.errors import ApiError, bad_request
from hf2triton.gateway.inputs import check_text_sizes, field, read_json, require_task, text_list, top_n
from hf2triton.gateway.responses import FastJSONResponse
from hf2triton.gateway.service import TASK_CLASSIFICATION, TASK_EMBEDDINGS, renormalised
from hf2triton.gateway.state import GatewayState


def _state(request: Request) -> GatewayState:
    return request.app.state.gateway


def _refuse_truncation(truncated: list[bool], max_length: int, name: str) -> None:
    cut = [i for i, flag in enumerate(truncated) if flag]
    if cut:
        shown = ", ".join(f"{name}[{i}]" for i in cut[:5])
        raise ApiError(413, f"{shown} {'is' if len(cut) == 1 else 'are'} longer than the model's max length of "
                       f"{max_length} tokens; send \"truncate\": true to cut them", name, "too_long")


async def embed(request: Request) -> FastJSONResponse:
    state = _state(request)
    body = await read_json(request, state.settings.max_request_bytes)
    texts = text_list(body.get("inputs"), "inputs", state.settings.max_inputs)
    truncate = field(body, "truncate", bool, False)
    if not field(body, "normalize", bool, True):
        raise bad_request("'normalize': false is not available: the served ensemble returns L2-normalised "
                          "embeddings", "normalize")
    if field(body, "truncation_direction", str, "Right").lower() != "right":
        raise bad_request("'truncation_direction' must be \"Right\": the served tokenizer truncates on the right",
                          "truncation_direction")
    if field(body, "prompt_name", str, None) is not None:
        raise bad_request("'prompt_name' is not supported: prepend the prompt to the text", "prompt_name")
    dimensions = field(body, "dimensions", int, None)
    served = await state.service.catalog.pick(field(body, "model", str, None), TASK_EMBEDDINGS,
                                              state.settings.default_model, "/embed")
    require_task(served.info, TASK_EMBEDDINGS, "/embed")
    check_text_sizes(texts, served.info, "inputs")
    result = await state.service.embed(served, texts)
    if not truncate:
        _refuse_truncation(result.truncated, served.info.max_sequence_length, "inputs")
    vectors = result.vectors
    if dimensions is not None:
        if not 1 <= dimensions <= vectors.shape[1]:
            raise bad_request(f"'dimensions' must be between 1 and {vectors.shape[1]}, not {dimensions}", "dimensions")
        vectors = renormalised(vectors, dimensions)
    return FastJSONResponse(np.ascontiguousarray(vectors, dtype=np.float32))


def _predict_inputs(value: Any) -> tuple[list[list[str]], bool]:
    """TEI's ``PredictInput``: ``"a"``, ``["a"]``, ``["a", "b"]`` (a pair) or ``[["a"], ["b", "c"]]`` (a batch)."""
    if isinstance(value, str):
        return [[value]], False
    if isinstance(value, list) and value and all(isinstance(x, str) for x in value):
        if len(value) > 2:
            raise bad_request("'inputs' as a flat list is one text [a] or one pair [a, b]; send a batch as "
                              "[[a], [b], ...]", "inputs")
        return [list(value)], False
    if isinstance(value, list) and value and all(isinstance(x, list) for x in value):
        for i, sequence in enumerate(value):
            if not 1 <= len(sequence) <= 2 or not all(isinstance(x, str) for x in sequence):
                raise bad_request(f"inputs[{i}] must be [text] or [text, text_pair]", "inputs")
        return [list(x) for x in value], True
    raise bad_request("'inputs' must be a string, a pair [a, b] or a batch [[a], [b, c], ...]", "inputs")


async def predict(request: Request) -> FastJSONResponse:
    state = _state(request)
    body = await read_json(request, state.settings.max_request_bytes)
    sequences, batched = _predict_inputs(body.get("inputs"))
    if len(sequences) > state.settings.max_inputs:
        raise ApiError(413, f"'inputs' has {len(sequences)} texts, over the limit of {state.settings.max_inputs}",
                       "inputs", "too_large")
    truncate = field(body, "truncate", bool, False)
    if field(body, "raw_scores", bool, False):
        raise bad_request("'raw_scores': true is not available: the served ensemble returns probabilities",
                          "raw_scores")
    served = await state.service.catalog.pick(field(body, "model", str, None), TASK_CLASSIFICATION,
                                              state.settings.default_model, "/predict")
    require_task(served.info, TASK_CLASSIFICATION, "/predict")
    if any(len(s) == 2 for s in sequences):
        raise bad_request(f"model {served.info.name!r} classifies single texts; it takes no text pairs", "inputs")
    texts = [s[0] for s in sequences]
    check_text_sizes(texts, served.info, "inputs")
    results = await state.service.classify(served, texts)
    if not truncate:
        _refuse_truncation([r.truncated for r in results], served.info.max_sequence_length, "inputs")
    answers = [[{"score": score, "label": label}
                for label, score in sorted(r.scores.items(), key=lambda item: -item[1])] for r in results]
    return FastJSONResponse(answers if batched else answers[0])


async def rerank(request: Request) -> FastJSONResponse:
    state = _state(request)
    body = await read_json(request, state.settings.max_request_bytes)
    query = field(body, "query", str)
    texts = text_list(body.get("texts"), "texts", state.settings.max_inputs)
    return_text = field(body, "return_text", bool, False)
    if field(body, "raw_scores", bool, False):
        raise bad_request("'raw_scores': true is not available: the served reranker returns scores", "raw_scores")
    count = top_n(body, len(texts))
    field(body, "truncate", bool, False)
    _, scores, _ = await state.service.rerank_route(field(body, "model", str, None), state.settings.default_model,
                                                    "/rerank", query, texts, "texts")
    answer = []
    for i in rank_order(scores, count):
        item: dict[str, Any] = {"index": i, "score": float(scores[i])}
        if return_text:
            item["text"] = texts[i]
        answer.append(item)
    return FastJSONResponse(answer)
