"""Clients for a served hf2triton ensemble, over Triton's gRPC or HTTP (KServe v2) API.

The ensemble ``NAME`` takes ``TEXT`` (BYTES, one UTF-8 text per batch row) and
publishes what a client needs (task, label names, limits) as parameters of its
model config (see :mod:`hf2triton.contract`). :class:`Client` reads that config
once, validates texts against the published limits before sending, splits lists
longer than ``max_batch_size`` into several requests and decodes the outputs into
typed results::

    from hf2triton.client import Client

    with Client("127.0.0.1:8001", model="all_minilm_l6_v2") as client:
        client.wait_for_model(timeout_s=60)
        vectors = client.embed(["first text", "second text"])  # float32 [2, H]

``classify`` returns :class:`Classification` and ``entities`` :class:`Entities` (token
classification: each :class:`Entity` with its label, score and character span);
``classify(texts, text_pair=...)`` classifies text pairs, and ``rerank(query, documents)``
scores documents with a cross-encoder, best first (:class:`RerankResult`).

:class:`AsyncClient` has the same API with ``async`` methods and sends the
chunks of one call concurrently. Every failure is raised as a
:class:`~hf2triton.errors.ClientError` (``InvalidInputError`` when the input is
rejected, ``ServerUnavailableError`` when the server or model cannot be reached);
tritonclient's own exceptions are chained, never leaked. Bad options (url, protocol,
TLS files) raise :class:`~hf2triton.errors.OptionsError`.

The package: ``results`` (result types, ``ModelInfo``, decoding), ``inputs`` (texts to
tensors, chunking), ``transport`` (the one gRPC/HTTP adapter, also used by the perf
sweep; error mapping, TLS), ``sync`` (:class:`Client`), ``aio`` (:class:`AsyncClient`),
``verify`` (served answers against the checkpoint in PyTorch; imports torch, so it is
not imported here). The pure helpers (:func:`encode_texts`, :func:`chunk`,
:func:`decode_outputs`, :func:`model_info_from_config`, :func:`to_client_error`) need
no server.
"""

from __future__ import annotations

from hf2triton import tasks as _tasks
from hf2triton.client.aio import AsyncClient
from hf2triton.client.inputs import chunk, encode_texts
from hf2triton.client.results import (
    Classification,
    Embedding,
    Entities,
    Entity,
    ModelInfo,
    RerankResult,
    Result,
    Score,
    decode_outputs,
    model_info_from_config,
)
from hf2triton.client.base import DEFAULT_MODEL
from hf2triton.client.sync import Client, connect
from hf2triton.client.transport import Endpoint, TLSOptions, parse_endpoint, to_client_error

TASK_EMBEDDINGS = _tasks.EMBEDDINGS.name
TASK_SEQUENCE_CLASSIFICATION = _tasks.SEQUENCE_CLASSIFICATION.name
TASK_TOKEN_CLASSIFICATION = _tasks.TOKEN_CLASSIFICATION.name
TASK_RERANK = _tasks.RERANK.name

__all__ = [
    "DEFAULT_MODEL",
    "TASK_EMBEDDINGS",
    "TASK_SEQUENCE_CLASSIFICATION",
    "TASK_TOKEN_CLASSIFICATION",
    "TASK_RERANK",
    "ModelInfo",
    "Embedding",
    "Classification",
    "Entity",
    "Entities",
    "Score",
    "RerankResult",
    "Result",
    "Client",
    "AsyncClient",
    "connect",
    "Endpoint",
    "TLSOptions",
    "parse_endpoint",
    "encode_texts",
    "chunk",
    "decode_outputs",
    "model_info_from_config",
    "to_client_error",
]
