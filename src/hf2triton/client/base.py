"""What :class:`~hf2triton.client.Client` and :class:`~hf2triton.client.AsyncClient` share.

Everything but the I/O: settings, the model-info cache, request planning (validate,
split to ``max_batch_size``, build), result decoding and the readiness-poll bookkeeping.
The two clients only differ in how they call the :class:`Transport` (directly, or
with ``await``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hf2triton import contract, tasks
from hf2triton.client.inputs import as_list, check_sizes, chunk, encode_pairs, encode_texts
from hf2triton.client.results import (
    RESULT_TYPES,
    ModelInfo,
    RerankResult,
    Result,
    Score,
    decode_outputs,
    model_info_from_config,
    ranked,
    stack_embeddings,
    task_of,
)
from hf2triton.client.transport import Request, Transport, output_arrays, parse_endpoint
from hf2triton.errors import ClientError, InvalidInputError, OptionsError, ServerUnavailableError

logger = logging.getLogger(__name__)

DEFAULT_MODEL = contract.DEFAULT_MODEL_NAME
POLL_INTERVAL_S = 0.25
NOT_READY = "the server answers but the server or model is not ready"


@dataclass(frozen=True)
class Plan:
    """The requests one ``infer`` call sends, and how to decode their answers."""

    info: ModelInfo
    requests: tuple[Request, ...]

    def decode(self, response: Any, request: Request) -> list[Result]:
        return decode_outputs(self.info, output_arrays(response, request.output_names))


class ReadinessPoll:
    """Bookkeeping of one ``wait_for_model``: per-call deadlines, the last failure, the final error.

    The clients keep only their loop (``time.sleep`` or ``await asyncio.sleep``).
    """

    def __init__(self, client: ClientBase, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._deadline = time.monotonic() + timeout_s
        self._last: BaseException | None = None

    def call_timeout(self) -> float:
        """The deadline for the next readiness call: the client's timeout, capped by what is left."""
        return max(0.1, min(self._client.timeout_s, self._deadline - time.monotonic()))

    def failed(self, exc: BaseException | None = None) -> None:
        self._last = exc if exc is not None else ServerUnavailableError(NOT_READY)

    def next_wait(self) -> float:
        """Seconds to sleep before the next try; raises :class:`ServerUnavailableError` when time is up."""
        if time.monotonic() + POLL_INTERVAL_S > self._deadline:
            client, last = self._client, self._last
            detail = f": {last}" if last is not None else ""
            raise ServerUnavailableError(
                f"model {client.model!r} at {client.url} ({client.protocol}) not ready after {self._timeout_s:g} s{detail}"
            ) from last
        return POLL_INTERVAL_S


class ClientBase:
    """Settings, info cache and request planning shared by the sync and async clients."""

    def __init__(
        self,
        url: str | None,
        protocol: str,
        model: str,
        timeout_s: float,
        info: ModelInfo | None,
        *,
        asynchronous: bool,
        connections: int = 1,
        ssl: bool = False,
        root_certificates: str | Path | None = None,
        private_key: str | Path | None = None,
        certificate_chain: str | Path | None = None,
    ) -> None:
        self.endpoint = parse_endpoint(
            url, protocol, ssl=ssl, root_certificates=root_certificates,
            private_key=private_key, certificate_chain=certificate_chain,
        )
        self.protocol = protocol
        self.url = self.endpoint.address
        self.model = model
        self.timeout_s = float(timeout_s)
        self._transport = Transport(
            self.endpoint, model, asynchronous=asynchronous, timeout_s=self.timeout_s, connections=connections
        )
        self._info: ModelInfo | None = info
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, protocol={self.protocol!r}, model={self.model!r})"

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS."""
        return self.endpoint.tls is not None

    def _check_open(self) -> None:
        if self._closed:
            raise ClientError(f"{self!r} is closed")

    def _encode(self, texts: Sequence[str] | str) -> np.ndarray:
        self._check_open()
        return encode_texts(texts)  # type and UTF-8 errors surface before any request

    def _encode_pairs(self, text_pair: Sequence[str] | str | None, rows: int) -> np.ndarray | None:
        return None if text_pair is None else encode_pairs(text_pair, rows)

    def _plan(self, info: ModelInfo, batch: np.ndarray, pair: np.ndarray | None = None,
              parameters: dict[str, Any] | None = None) -> Plan:
        outputs = task_of(info).served_outputs
        check_sizes(batch, info.max_text_bytes)
        if pair is not None:
            if not info.text_pair:
                raise InvalidInputError(
                    f"invalid input: model {self.model!r} ({info.task}) takes no text pairs; send texts alone"
                )
            check_sizes(pair, info.max_text_bytes)
        parts = chunk(batch, info.max_batch_size)
        pairs = chunk(pair, info.max_batch_size) if pair is not None else [None] * len(parts)
        logger.debug("%s: %d texts in %d requests to %s", self.model, len(batch), len(parts), self.url)
        requests = (self._transport.request(part, outputs, p, parameters) for part, p in zip(parts, pairs))
        return Plan(info, tuple(requests))

    @staticmethod
    def _rerank_pairs(query: str, documents: Sequence[str], top_n: int | None) -> tuple[list[str], list[str]]:
        """The (query, document) columns of a rerank call; bad arguments raise before any request."""
        if not isinstance(query, str):
            raise InvalidInputError(f"invalid input: query is {type(query).__name__}, expected str")
        items = as_list(documents)
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
            raise OptionsError(f"top_n must be a positive integer or None, got {top_n!r}")
        return [query] * len(items), items

    @staticmethod
    def _ranked(results: list[Result], documents: list[str], top_n: int | None,
                return_documents: bool) -> list[RerankResult]:
        scores = [r for r in results if isinstance(r, Score)]
        return ranked(scores, documents, top_n, return_documents)

    def _remember(self, config: Any) -> ModelInfo:
        self._info = model_info_from_config(self.model, config)
        return self._info

    def _check_answer(self, info: ModelInfo, answer: str, method: str) -> None:
        """A typed call (``embed``…) needs a model whose task answers that way."""
        if task_of(info).answer != answer:
            wanted = next(t.name for t in tasks.TASKS.values() if t.answer == answer)
            raise ClientError(
                f"model {self.model!r} serves task {info.task!r}, not {wanted!r}: {method}() needs {wanted}"
            )

    @staticmethod
    def _typed(answer: str, results: list[Result]) -> Any:
        """``embed``'s float32 array, or the results of the answer's type."""
        if answer == tasks.ANSWER_EMBEDDING:
            return stack_embeddings(results)
        return [r for r in results if isinstance(r, RESULT_TYPES[answer])]


def embedding_parameters(prompt_name: str | None, dimensions: int | None) -> dict[str, Any]:
    """``embed``'s options as KServe v2 request parameters; the server checks them against the model
    (known prompt, 1..embedding size) and answers a mistake with a 400 naming it."""
    parameters: dict[str, Any] = {}
    if prompt_name is not None:
        if not isinstance(prompt_name, str) or not prompt_name:
            raise ClientError(f"prompt_name must be a non-empty string, got {prompt_name!r}")
        parameters[contract.REQUEST_PROMPT_NAME] = prompt_name
    if dimensions is not None:
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            raise ClientError(f"dimensions must be a positive integer, got {dimensions!r}")
        parameters[contract.REQUEST_DIMENSIONS] = dimensions
    return parameters
