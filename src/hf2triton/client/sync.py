"""The blocking client: :class:`Client` and :func:`connect`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hf2triton import tasks
from hf2triton.client.base import DEFAULT_MODEL, ClientBase, ReadinessPoll, embedding_parameters
from hf2triton.client.inputs import as_list
from hf2triton.client.results import Classification, Entities, ModelInfo, RerankResult, Result
from hf2triton.errors import ServerUnavailableError


class Client(ClientBase):
    """Synchronous client for one hf2triton ensemble (one connection per client).

    ``url`` is ``host:port`` (default ``127.0.0.1:8001`` for gRPC, ``:8000`` for
    HTTP), or ``https://host:port`` for TLS; ``ssl=True`` turns TLS on for gRPC, with
    optional ``root_certificates`` (PEM; default: the system's) and a client
    certificate (``private_key`` + ``certificate_chain``). ``timeout_s`` bounds each
    network call; ``info`` (optional) is a known :class:`ModelInfo` that spares the
    config request. Bad options raise :class:`~hf2triton.errors.OptionsError`. Use as
    a context manager.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        protocol: str = "grpc",
        model: str = DEFAULT_MODEL,
        timeout_s: float = 60.0,
        info: ModelInfo | None = None,
        ssl: bool = False,
        root_certificates: str | Path | None = None,
        private_key: str | Path | None = None,
        certificate_chain: str | Path | None = None,
    ) -> None:
        super().__init__(
            url, protocol, model, timeout_s, info, asynchronous=False, ssl=ssl,
            root_certificates=root_certificates, private_key=private_key, certificate_chain=certificate_chain,
        )
        self._transport.connection()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; idempotent."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._transport.close()

    def _ready(self, timeout_s: float) -> bool:
        with self._transport.translated():
            return bool(self._transport.server_ready(timeout_s) and self._transport.model_ready(timeout_s))

    def wait_for_model(self, timeout_s: float = 60.0) -> ModelInfo:
        """Poll until the server and model are ready, then read and cache the model's info.

        Raises :class:`ServerUnavailableError` naming the url and model on timeout.
        """
        self._check_open()
        poll = ReadinessPoll(self, timeout_s)
        while True:
            try:
                if self._ready(poll.call_timeout()):
                    return self.fetch_info()
                poll.failed()
            except ServerUnavailableError as exc:
                poll.failed(exc)
            time.sleep(poll.next_wait())

    def fetch_info(self) -> ModelInfo:
        """Read the ensemble's config from the server (again) and cache it."""
        self._check_open()
        with self._transport.translated():
            return self._remember(self._transport.model_config())

    @property
    def info(self) -> ModelInfo:
        """The model's :class:`ModelInfo`, read from the server on first use."""
        return self._info if self._info is not None else self.fetch_info()

    def infer(self, texts: Sequence[str] | str, *, text_pair: Sequence[str] | str | None = None,
              parameters: dict[str, Any] | None = None) -> list[Result]:
        """One result per text, in order (a single ``str`` gives a list of one). ``text_pair``
        (optional): a second text per text, for models that take pairs (classifiers, rerankers);
        ``parameters``: KServe v2 request parameters (e.g. an embedder's prompt_name, dimensions)."""
        batch = self._encode(texts)
        pair = self._encode_pairs(text_pair, len(batch))
        if not len(batch):
            return []
        plan = self._plan(self.info, batch, pair, parameters)
        results: list[Result] = []
        for request in plan.requests:
            with self._transport.translated():
                response = self._transport.infer(request)
            results.extend(plan.decode(response, request))
        return results

    def _typed_call(
        self, texts: Sequence[str] | str, answer: str, method: str,
        text_pair: Sequence[str] | str | None = None, parameters: dict[str, Any] | None = None,
    ) -> Any:
        items = as_list(texts)
        if not items:
            return self._typed(answer, [])
        self._check_answer(self.info, answer, method)
        return self._typed(answer, self.infer(items, text_pair=text_pair, parameters=parameters))

    def embed(
        self, texts: Sequence[str] | str, *, prompt_name: str | None = None, dimensions: int | None = None
    ) -> np.ndarray:
        """Embeddings as one float32 array ``[n, H]`` (``[n, dimensions]``); the task must be ``embeddings``.

        ``prompt_name``: one of the checkpoint's sentence-transformers prompts (default: its
        ``default_prompt_name``, if any); ``dimensions``: keep the first N components, re-normalised
        (Matryoshka, as ``truncate_dim``).
        """
        parameters = embedding_parameters(prompt_name, dimensions)
        return self._typed_call(texts, tasks.ANSWER_EMBEDDING, "embed", parameters=parameters)

    def classify(
        self, texts: Sequence[str] | str, text_pair: Sequence[str] | str | None = None
    ) -> list[Classification]:
        """Classifications, one per text; the model's task must be ``sequence-classification``.

        ``text_pair[i]`` (optional) is classified together with ``texts[i]``, as transformers'
        ``pipeline("text-classification")({"text": texts[i], "text_pair": text_pair[i]})``.
        """
        return self._typed_call(texts, tasks.ANSWER_CLASSIFICATION, "classify", text_pair)

    def rerank(
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
        return self._ranked(self._typed_call(queries, tasks.ANSWER_SCORE, "rerank", items),
                            items, top_n, return_documents)

    def entities(self, texts: Sequence[str] | str) -> list[Entities]:
        """Entities per text; the model's task must be ``token-classification``."""
        return self._typed_call(texts, tasks.ANSWER_ENTITIES, "entities")


def connect(
    url: str | None = None,
    protocol: str = "grpc",
    model: str = DEFAULT_MODEL,
    *,
    wait_s: float = 60.0,
    **kwargs: Any,
) -> Client:
    """A :class:`Client` whose model is ready (``wait_for_model(wait_s)`` already done).

    ``with connect("127.0.0.1:8001") as client: ...``; on failure the client is closed.
    """
    client = Client(url, protocol=protocol, model=model, **kwargs)
    try:
        client.wait_for_model(timeout_s=wait_s)
    except BaseException:
        client.close()
        raise
    return client
