"""What the HTTP routes ask of Triton: embed, classify, rerank, count tokens.

Routes (OpenAI and TEI flavours) parse and answer; this module runs the ensemble
and turns Triton's failures into :class:`ApiError`: bad input 400/413, a model
unloaded meanwhile 404 (and the catalog forgets it), Triton down 503.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from hf2triton import contract
from hf2triton.client import Classification, decode_outputs
from hf2triton.errors import ClientError, ServerUnavailableError
from hf2triton.gateway.catalog import ModelCatalog, ServedModel
from hf2triton.gateway.errors import ApiError, from_client_error, model_not_found
from hf2triton.gateway.inputs import check_text_sizes
from hf2triton.gateway.triton import TritonConnection

logger = logging.getLogger(__name__)

TASK_EMBEDDINGS = "embeddings"
TASK_CLASSIFICATION = "sequence-classification"
# A reranker (cross-encoder, task "rerank") takes the query in TEXT and the document in TEXT_PAIR
# (BYTES [n, 1] each, one pair per row) and returns SCORES (FP32 [n, 1]): one relevance score per pair.
TASK_RERANK = "rerank"
INPUT_TEXT_PAIR = "TEXT_PAIR"

_GONE_HINTS = ("unknown model", "is not found", "no available version", "is not ready")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Embeddings:
    vectors: np.ndarray  # float32 [n, H], L2-normalised by the ensemble
    truncated: list[bool]  # per text: cut to the model's max sequence length
    tokens: list[int]  # per text, as the served tokenizer counts them


def renormalised(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Matryoshka truncation: the first ``dimensions`` components, L2-normalised again."""
    cut = np.ascontiguousarray(vectors[:, :dimensions], dtype=np.float32)
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    return cut / np.maximum(norms, np.finfo(np.float32).tiny)


class GatewayService:
    """The catalog and connection behind every route."""

    def __init__(self, connection: TritonConnection, catalog: ModelCatalog) -> None:
        self.connection = connection
        self.catalog = catalog

    async def _triton(self, served: ServedModel, call: Awaitable[_T]) -> _T:
        try:
            return await call
        except ServerUnavailableError as exc:
            if any(hint in str(exc).lower() for hint in _GONE_HINTS) and "cannot connect" not in str(exc):
                await self.catalog.forget(served.info.name)
                raise model_not_found(served.info.name, list(self.catalog.models)) from None
            raise from_client_error(exc) from None
        except ClientError as exc:
            raise from_client_error(exc) from None

    async def embed(self, served: ServedModel, texts: list[str]) -> Embeddings:
        outputs = (contract.OUTPUT_EMBEDDING, contract.OUTPUT_TRUNCATED)
        if served.tokens.in_response:
            outputs += (contract.OUTPUT_TOKENS,)
        inference = self._triton(served, self.connection.infer_columns(served.info, {contract.INPUT_TEXT: texts}, outputs))
        if served.tokens.in_response:
            arrays = await inference
            tokens = response_tokens(arrays, len(texts))
        elif served.tokens.remote:
            arrays, tokens = await asyncio.gather(inference, self._triton(served, served.tokens.count(texts)))
        else:  # microseconds: two tasks for gather would cost more than counting
            tokens = await served.tokens.count(texts)
            arrays = await inference
        vectors = np.asarray(arrays[contract.OUTPUT_EMBEDDING], dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise ApiError(502, f"model {served.info.name!r} returned embeddings of shape {list(vectors.shape)} "
                           f"for {len(texts)} texts", None, "triton_error")
        truncated = [bool(x) for x in np.asarray(arrays[contract.OUTPUT_TRUNCATED]).reshape(len(texts), -1)[:, 0]]
        return Embeddings(vectors, truncated, tokens)

    async def classify(self, served: ServedModel, texts: list[str]) -> list[Classification]:
        outputs = (contract.OUTPUT_LABEL, contract.OUTPUT_SCORES, contract.OUTPUT_TRUNCATED)
        arrays = await self._triton(
            served, self.connection.infer_columns(served.info, {contract.INPUT_TEXT: texts}, outputs))
        try:
            results = decode_outputs(served.info, arrays)
        except ClientError as exc:
            raise ApiError(502, str(exc), None, "triton_error") from None
        return [r for r in results if isinstance(r, Classification)]

    async def rerank(self, served: ServedModel, query: str, documents: list[str]) -> tuple[np.ndarray, list[int]]:
        """One score per (query, document), and token counts whose sum is the request's usage
        (each pair's tokens when the model answers them, else the query's and each document's)."""
        columns = {contract.INPUT_TEXT: [query] * len(documents), INPUT_TEXT_PAIR: documents}
        if served.tokens.in_response:  # each pair's tokens, query included
            arrays = await self._triton(served, self.connection.infer_columns(
                served.info, columns, (contract.OUTPUT_SCORES, contract.OUTPUT_TOKENS)))
            tokens = response_tokens(arrays, len(documents))
        else:
            arrays, tokens = await asyncio.gather(
                self._triton(served, self.connection.infer_columns(served.info, columns, (contract.OUTPUT_SCORES,))),
                self._triton(served, served.tokens.count([query, *documents])),
            )
        scores = np.asarray(arrays[contract.OUTPUT_SCORES], dtype=np.float32).reshape(len(documents), -1)[:, 0]
        return scores, tokens

    async def rerank_route(self, name: str | None, default_model: str | None, route: str, query: str,
                           documents: list[str], documents_field: str) -> tuple[ServedModel, np.ndarray, list[int]]:
        """What every rerank route does: pick the reranker (a model of another task is refused),
        check the texts against its limits (``documents_field`` names them in errors), score."""
        served = await self.catalog.pick(name, TASK_RERANK, default_model, route)
        if served.info.task != TASK_RERANK:
            raise not_a_reranker(served)
        check_text_sizes([query], served.info, "query")
        check_text_sizes(documents, served.info, documents_field)
        scores, tokens = await self.rerank(served, query, documents)
        return served, scores, tokens


def response_tokens(arrays: dict[str, np.ndarray], rows: int) -> list[int]:
    """The ``TOKENS`` a model answered, one per row."""
    return [int(count) for count in np.asarray(arrays[contract.OUTPUT_TOKENS]).reshape(rows, -1)[:, 0]]


def not_a_reranker(served: ServedModel) -> ApiError:
    return ApiError(400, f"model {served.info.name!r} is not a reranker (it serves task {served.info.task!r}; "
                    f"rerank routes need a model with task {TASK_RERANK!r})", "model", "not_a_reranker")
