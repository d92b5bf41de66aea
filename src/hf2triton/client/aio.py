"""The asyncio client: :class:`AsyncClient` (``tritonclient.grpc.aio`` / ``tritonclient.http.aio``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hf2triton import tasks
from hf2triton.client.base import DEFAULT_MODEL, ClientBase, ReadinessPoll, embedding_parameters
from hf2triton.client.inputs import as_list
from hf2triton.client.results import Classification, Entities, ModelInfo, RerankResult, Result
from hf2triton.client.transport import Request
from hf2triton.errors import ClientError, OptionsError, ServerUnavailableError


class AsyncClient(ClientBase):
    """Asynchronous client with the same API as :class:`Client` (``async`` methods).

    The chunks of one call are sent concurrently, at most ``max_concurrency`` at a
    time. The connection is opened inside the running event loop on first use.
    Use as ``async with AsyncClient(...) as client:``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        protocol: str = "grpc",
        model: str = DEFAULT_MODEL,
        timeout_s: float = 60.0,
        max_concurrency: int = 8,
        info: ModelInfo | None = None,
        ssl: bool = False,
        root_certificates: str | Path | None = None,
        private_key: str | Path | None = None,
        certificate_chain: str | Path | None = None,
    ) -> None:
        if max_concurrency < 1:
            raise OptionsError(f"max_concurrency must be >= 1, got {max_concurrency}")
        super().__init__(
            url, protocol, model, timeout_s, info, asynchronous=True, connections=max_concurrency, ssl=ssl,
            root_certificates=root_certificates, private_key=private_key, certificate_chain=certificate_chain,
        )
        self.max_concurrency = max_concurrency

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; idempotent."""
        self._closed = True
        closing = self._transport.close()
        if closing is not None:
            with contextlib.suppress(Exception):
                await closing

    async def _ready(self, timeout_s: float) -> bool:
        self._check_open()
        with self._transport.translated():
            return bool(
                await self._transport.server_ready(timeout_s) and await self._transport.model_ready(timeout_s)
            )

    async def wait_for_model(self, timeout_s: float = 60.0) -> ModelInfo:
        """Poll until the server and model are ready, then read and cache the model's info."""
        poll = ReadinessPoll(self, timeout_s)
        while True:
            try:
                if await self._ready(poll.call_timeout()):
                    return await self.fetch_info()
                poll.failed()
            except ServerUnavailableError as exc:
                poll.failed(exc)
            await asyncio.sleep(poll.next_wait())

    async def fetch_info(self) -> ModelInfo:
        """Read the ensemble's config from the server (again) and cache it."""
        self._check_open()
        with self._transport.translated():
            return self._remember(await self._transport.model_config())

    @property
    def info(self) -> ModelInfo:
        """The cached :class:`ModelInfo` (after ``await wait_for_model()``, ``fetch_info()`` or a call)."""
        if self._info is None:
            raise ClientError(f"{self!r} has no model info yet: await wait_for_model() or fetch_info() first")
        return self._info

    async def _info_or_fetch(self) -> ModelInfo:
        return self._info if self._info is not None else await self.fetch_info()

    async def infer(self, texts: Sequence[str] | str, *, text_pair: Sequence[str] | str | None = None,
                    parameters: dict[str, Any] | None = None) -> list[Result]:
        """One result per text, in order; chunks are sent concurrently. ``text_pair`` (optional):
        a second text per text, for models that take pairs (sequence classifiers, rerankers);
        ``parameters``: KServe v2 request parameters (e.g. an embedder's prompt_name, dimensions)."""
        batch = self._encode(texts)
        pair = self._encode_pairs(text_pair, len(batch))
        if not len(batch):
            return []
        plan = self._plan(await self._info_or_fetch(), batch, pair, parameters)
        gate = asyncio.Semaphore(self.max_concurrency)

        async def send(request: Request) -> list[Result]:
            async with gate:
                with self._transport.translated():
                    response = await self._transport.infer(request)
            return plan.decode(response, request)

        pending = [asyncio.ensure_future(send(request)) for request in plan.requests]
        try:
            parts = await asyncio.gather(*pending)
        except BaseException:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise
        return [result for part in parts for result in part]

    async def _typed_call(
        self, texts: Sequence[str] | str, answer: str, method: str,
        text_pair: Sequence[str] | str | None = None, parameters: dict[str, Any] | None = None,
    ) -> Any:
        items = as_list(texts)
        if not items:
            return self._typed(answer, [])
        self._check_answer(await self._info_or_fetch(), answer, method)
        return self._typed(answer, await self.infer(items, text_pair=text_pair, parameters=parameters))

    async def embed(
        self, texts: Sequence[str] | str, *, prompt_name: str | None = None, dimensions: int | None = None
    ) -> np.ndarray:
        """Embeddings as one float32 array ``[n, H]`` (``[n, dimensions]``); the task must be ``embeddings``.

        ``prompt_name``: one of the checkpoint's sentence-transformers prompts (default: its
        ``default_prompt_name``, if any); ``dimensions``: keep the first N components, re-normalised
        (Matryoshka, as ``truncate_dim``).
        """
        parameters = embedding_parameters(prompt_name, dimensions)
        return await self._typed_call(texts, tasks.ANSWER_EMBEDDING, "embed", parameters=parameters)

    async def classify(
        self, texts: Sequence[str] | str, text_pair: Sequence[str] | str | None = None
    ) -> list[Classification]:
        """Classifications, one per text; the model's task must be ``sequence-classification``.

        ``text_pair[i]`` (optional) is classified together with ``texts[i]``, as transformers'
        ``pipeline("text-classification")({"text": texts[i], "text_pair": text_pair[i]})``.
        """
        return await self._typed_call(texts, tasks.ANSWER_CLASSIFICATION, "classify", text_pair)

    async def rerank(
        self, query: str, documents: Sequence[str], top_n: int | None = None, return_documents: bool = False
    ) -> list[RerankResult]:
        """``documents`` scored against ``query`` by a reranker (task ``rerank``), best first.

        Each :class:`RerankResult` names the document's ``index`` in ``documents``; ``top_n``
        keeps the best n, ``return_documents`` adds the texts. Long lists are sent in
        requests of the server's ``max_batch_size``.
        """
        queries, items = self._rerank_pairs(query, documents, top_n)
        if not items:
            return []
        return self._ranked(await self._typed_call(queries, tasks.ANSWER_SCORE, "rerank", items),
                            items, top_n, return_documents)

    async def entities(self, texts: Sequence[str] | str) -> list[Entities]:
        """Entities per text; the model's task must be ``token-classification``."""
        return await self._typed_call(texts, tasks.ANSWER_ENTITIES, "entities")
