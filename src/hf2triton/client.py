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
classification: each :class:`Entity` with its label, score and character span).

:class:`AsyncClient` has the same API with ``async`` methods and sends the
chunks of one call concurrently. Every failure is raised as a
:class:`~hf2triton.errors.ClientError` (``InvalidInputError`` when the input is
rejected, ``ServerUnavailableError`` when the server or model cannot be reached);
tritonclient's own exceptions are chained, never leaked.

The pure helpers (:func:`encode_texts`, :func:`chunk`, :func:`decode_outputs`,
:func:`model_info_from_config`, :func:`to_client_error`) need no server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar, Union

import numpy as np

from hf2triton import contract
from hf2triton.errors import ClientError, Hf2TritonError, InvalidInputError, OptionsError, ServerUnavailableError

__all__ = [
    "DEFAULT_MODEL",
    "TASK_EMBEDDINGS",
    "TASK_SEQUENCE_CLASSIFICATION",
    "TASK_TOKEN_CLASSIFICATION",
    "ModelInfo",
    "Embedding",
    "Classification",
    "Entity",
    "Entities",
    "Result",
    "Client",
    "AsyncClient",
    "connect",
    "encode_texts",
    "chunk",
    "decode_outputs",
    "model_info_from_config",
    "to_client_error",
]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = contract.DEFAULT_MODEL_NAME
TASK_EMBEDDINGS = "embeddings"
TASK_SEQUENCE_CLASSIFICATION = "sequence-classification"
TASK_TOKEN_CLASSIFICATION = "token-classification"

_DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
_POLL_INTERVAL_S = 0.25
_MAX_PROBLEMS_SHOWN = 10

_T = TypeVar("_T")


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ModelInfo:
    """What the ensemble's model config publishes about the served model.

    ``max_text_bytes`` and ``max_sequence_length`` are 0 when the config does not
    state them (then the client does not check text sizes itself).
    """

    name: str
    task: str
    labels: tuple[str, ...]
    multi_label: bool
    max_batch_size: int
    max_text_bytes: int
    max_sequence_length: int
    aggregation: str = ""  # token classification: how token labels were grouped into entities


@dataclass(frozen=True, eq=False)
class Embedding:
    """One text's pooled, L2-normalised embedding (float32 ``[H]``).

    ``truncated`` is true when the text was cut to the model's max sequence length.
    (Compared by identity: numpy arrays have no single truth value.)
    """

    vector: np.ndarray
    truncated: bool


@dataclass(frozen=True)
class Classification:
    """One text's sequence-classification result.

    ``label``/``score``: the top class and its probability; ``scores``: every
    label's probability (softmax, or independent sigmoids for multi-label models).
    """

    label: str
    score: float
    scores: dict[str, float]
    truncated: bool

    def labels(self, threshold: float = 0.5) -> tuple[str, ...]:
        """Labels whose probability is at least ``threshold``, highest first (multi-label use)."""
        kept = [(name, p) for name, p in self.scores.items() if p >= threshold]
        kept.sort(key=lambda item: item[1], reverse=True)
        return tuple(name for name, _ in kept)


@dataclass(frozen=True)
class Entity:
    """One entity (or, with aggregation ``none``, one labelled token) found in a text.

    ``text[start:end]`` is its span in the text sent (character offsets); ``word`` is
    the tokenizer's rendering of it (lower-cased by uncased models, like transformers');
    ``label`` is the entity group (``PER`` for ``B-PER``/``I-PER``), or the token's own
    label with aggregation ``none``, where ``index`` is the token's position.
    """

    label: str
    score: float
    word: str
    start: int
    end: int
    index: int | None = None


@dataclass(frozen=True)
class Entities:
    """One text's token-classification result: its entities in text order."""

    entities: tuple[Entity, ...]
    truncated: bool


Result = Union[Embedding, Classification, Entities]


# --------------------------------------------------------------------------- per-task decoding


def _rows(outputs: Mapping[str, np.ndarray], name: str, n: int | None) -> np.ndarray:
    """Output ``name`` as an array whose first axis has ``n`` rows (any ``n`` when None)."""
    array = outputs.get(name)
    if array is None:
        raise ClientError(f"the response has no output {name!r} (got {sorted(outputs)})")
    array = np.asarray(array)
    if array.ndim == 0 or (n is not None and array.shape[0] != n):
        raise ClientError(f"output {name!r} has shape {list(array.shape)}, expected {n} rows")
    return array


def _truncated_flags(outputs: Mapping[str, np.ndarray], n: int) -> list[bool]:
    flags = _rows(outputs, contract.OUTPUT_TRUNCATED, n)
    return [bool(row) for row in flags.reshape(n, -1)[:, 0]] if n else []


def _decode_embeddings(info: ModelInfo, outputs: Mapping[str, np.ndarray]) -> list[Result]:
    vectors = _rows(outputs, contract.OUTPUT_EMBEDDING, None)
    if vectors.ndim != 2:
        raise ClientError(f"output {contract.OUTPUT_EMBEDDING!r} has shape {list(vectors.shape)}, expected [n, H]")
    vectors = vectors.astype(np.float32, copy=False)
    truncated = _truncated_flags(outputs, vectors.shape[0])
    return [Embedding(vector=vectors[i], truncated=truncated[i]) for i in range(vectors.shape[0])]


def _label_names(info: ModelInfo, count: int) -> tuple[str, ...]:
    if not info.labels:
        return tuple(f"LABEL_{i}" for i in range(count))  # Hugging Face's default id2label
    if len(info.labels) != count:
        raise ClientError(
            f"model {info.name!r} publishes {len(info.labels)} labels ({contract.PARAM_LABELS}) "
            f"but returned {count} scores per text"
        )
    return info.labels


def _as_str(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _decode_sequence_classification(info: ModelInfo, outputs: Mapping[str, np.ndarray]) -> list[Result]:
    scores = _rows(outputs, contract.OUTPUT_SCORES, None)
    if scores.ndim != 2:
        raise ClientError(f"output {contract.OUTPUT_SCORES!r} has shape {list(scores.shape)}, expected [n, num_labels]")
    n = scores.shape[0]
    top = _rows(outputs, contract.OUTPUT_LABEL, n).reshape(n, -1)[:, 0] if n else []
    truncated = _truncated_flags(outputs, n)
    names = _label_names(info, scores.shape[1])
    results: list[Result] = []
    for i in range(n):
        row = {name: float(p) for name, p in zip(names, scores[i])}
        label = _as_str(top[i])
        score = row[label] if label in row else float(np.max(scores[i]))
        results.append(Classification(label=label, score=score, scores=row, truncated=truncated[i]))
    return results


def _entity(raw: Mapping[str, Any]) -> Entity:
    try:
        label = raw["entity_group"] if "entity_group" in raw else raw["entity"]
        index = raw.get("index")
        return Entity(
            label=str(label), score=float(raw["score"]), word=str(raw["word"]),
            start=int(raw["start"]), end=int(raw["end"]), index=None if index is None else int(index),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ClientError(f"malformed entity {raw!r}: {exc}") from None


def _decode_token_classification(info: ModelInfo, outputs: Mapping[str, np.ndarray]) -> list[Result]:
    documents = _rows(outputs, contract.OUTPUT_ENTITIES, None).reshape(-1)
    truncated = _truncated_flags(outputs, len(documents))
    results: list[Result] = []
    for i, document in enumerate(documents):
        try:
            raw = json.loads(_as_str(document))
        except json.JSONDecodeError as exc:
            raise ClientError(f"output {contract.OUTPUT_ENTITIES!r}[{i}] is not JSON: {exc}") from None
        if not isinstance(raw, list):
            raise ClientError(f"output {contract.OUTPUT_ENTITIES!r}[{i}] is not a JSON list")
        results.append(Entities(entities=tuple(_entity(e) for e in raw), truncated=truncated[i]))
    return results


@dataclass(frozen=True)
class _TaskSpec:
    """How one task's outputs are requested and decoded; add a row to ``_TASKS`` for a new task."""

    outputs: tuple[str, ...]
    decode: Callable[[ModelInfo, Mapping[str, np.ndarray]], list[Result]]


_TASKS: dict[str, _TaskSpec] = {
    TASK_EMBEDDINGS: _TaskSpec(
        outputs=(contract.OUTPUT_EMBEDDING, contract.OUTPUT_TRUNCATED),
        decode=_decode_embeddings,
    ),
    TASK_SEQUENCE_CLASSIFICATION: _TaskSpec(
        outputs=(contract.OUTPUT_LABEL, contract.OUTPUT_SCORES, contract.OUTPUT_TRUNCATED),
        decode=_decode_sequence_classification,
    ),
    TASK_TOKEN_CLASSIFICATION: _TaskSpec(
        outputs=(contract.OUTPUT_ENTITIES, contract.OUTPUT_TRUNCATED),
        decode=_decode_token_classification,
    ),
}


def _task_spec(info: ModelInfo) -> _TaskSpec:
    try:
        return _TASKS[info.task]
    except KeyError:
        raise ClientError(
            f"model {info.name!r} serves task {info.task!r}, which this client cannot decode "
            f"(supported: {', '.join(sorted(_TASKS))})"
        ) from None


def decode_outputs(info: ModelInfo, outputs: Mapping[str, np.ndarray]) -> list[Result]:
    """Turn one response's output arrays into one typed result per text, in order."""
    return _task_spec(info).decode(info, outputs)


# --------------------------------------------------------------------------- config


def _parameters(config: Mapping[str, Any]) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in (config.get("parameters") or {}).items():
        params[key] = value.get("string_value", "") if isinstance(value, Mapping) else str(value)
    return params


def _int_param(name: str, params: Mapping[str, str], key: str) -> int:
    raw = params.get(key, "").strip()
    if not raw:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise ClientError(f"model {name!r}: parameter {key} is {raw!r}, expected an integer") from None


def model_info_from_config(name: str, config: Mapping[str, Any]) -> ModelInfo:
    """Read a :class:`ModelInfo` from ``get_model_config``'s answer.

    Accepts both shapes: gRPC ``as_json=True`` gives ``{"config": {...}}``, HTTP the
    config dict itself. Raises :class:`ClientError` when the model is not an
    hf2triton ensemble (no ``hf2triton.task`` parameter) or a parameter is malformed.
    """
    if isinstance(config.get("config"), Mapping):
        config = config["config"]
    params = _parameters(config)
    task = params.get(contract.PARAM_TASK, "").strip()
    if not task:
        raise ClientError(
            f"model {name!r} is not an hf2triton ensemble: its config has no parameter {contract.PARAM_TASK}"
        )
    raw_labels = params.get(contract.PARAM_LABELS, "").strip() or "[]"
    try:
        labels = json.loads(raw_labels)
    except json.JSONDecodeError as exc:
        raise ClientError(f"model {name!r}: parameter {contract.PARAM_LABELS} is not JSON: {exc}") from exc
    if not isinstance(labels, list):
        raise ClientError(f"model {name!r}: parameter {contract.PARAM_LABELS} must be a JSON list, got {raw_labels!r}")
    multi = params.get(contract.PARAM_MULTI_LABEL, "false").strip().lower() or "false"
    if multi not in ("true", "false"):
        raise ClientError(f"model {name!r}: parameter {contract.PARAM_MULTI_LABEL} is {multi!r}, expected true/false")
    try:
        max_batch_size = int(config.get("max_batch_size", 0) or 0)
    except (TypeError, ValueError):
        raise ClientError(f"model {name!r}: max_batch_size is {config.get('max_batch_size')!r}") from None
    if max_batch_size < 1:
        raise ClientError(f"model {name!r} has max_batch_size {max_batch_size}; an hf2triton ensemble batches (>= 1)")
    return ModelInfo(
        name=name,
        task=task,
        labels=tuple(str(label) for label in labels),
        multi_label=multi == "true",
        max_batch_size=max_batch_size,
        max_text_bytes=_int_param(name, params, contract.PARAM_MAX_TEXT_BYTES),
        max_sequence_length=_int_param(name, params, contract.PARAM_MAX_SEQUENCE_LENGTH),
        aggregation=params.get(contract.PARAM_AGGREGATION, "").strip(),
    )


# --------------------------------------------------------------------------- input


def _as_list(texts: Sequence[str] | str) -> list[Any]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
        raise InvalidInputError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
    return list(texts)


def _too_long(index: int, size: int, limit: int) -> str:
    return f"texts[{index}] is {size} UTF-8 bytes, over the limit of {limit} bytes ({contract.PARAM_MAX_TEXT_BYTES})"


def _raise_problems(problems: list[str]) -> None:
    if problems:
        head = "invalid input: " if len(problems) == 1 else f"invalid input ({len(problems)} problems): "
        shown = problems[:_MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        raise InvalidInputError(head + "; ".join(shown) + (f"; and {more} more" if more else ""))


def encode_texts(texts: Sequence[str] | str, max_text_bytes: int = 0) -> np.ndarray:
    """Encode texts as UTF-8 into the ``TEXT`` tensor: an ``np.object_`` array ``[n, 1]`` of bytes.

    A single ``str`` is one text; ``""`` is a valid text. With ``max_text_bytes > 0``
    longer texts are rejected. Every problem is collected and raised once as
    :class:`InvalidInputError` naming each index (its type, or its size and the limit).
    """
    items = _as_list(texts)
    problems: list[str] = []
    array = np.empty((len(items), 1), dtype=np.object_)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            problems.append(f"texts[{i}] is {type(text).__name__}, expected str")
            continue
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            problems.append(f"texts[{i}] cannot be encoded as UTF-8 ({exc.reason} at position {exc.start})")
            continue
        if 0 < max_text_bytes < len(data):
            problems.append(_too_long(i, len(data), max_text_bytes))
        array[i, 0] = data
    _raise_problems(problems)
    return array


def _check_sizes(batch: np.ndarray, max_text_bytes: int) -> None:
    if max_text_bytes > 0:
        _raise_problems(
            [_too_long(i, len(data), max_text_bytes) for i, data in enumerate(batch[:, 0]) if len(data) > max_text_bytes]
        )


def chunk(items: Sequence[_T], size: int) -> list[Sequence[_T]]:
    """Split ``items`` (a list, tuple or array) into consecutive slices of at most ``size``, in order."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    return [items[start : start + size] for start in range(0, len(items), size)]


# --------------------------------------------------------------------------- errors

_INVALID_STATUSES = {"400", "StatusCode.INVALID_ARGUMENT"}
_UNAVAILABLE_STATUSES = {"503", "StatusCode.UNAVAILABLE"}
_NOT_FOUND_STATUSES = {"404", "StatusCode.NOT_FOUND"}
_TIMEOUT_STATUSES = {"StatusCode.DEADLINE_EXCEEDED", "504"}
_NOT_READY_HINTS = ("unknown model", "is not ready", "no available version", "is not found")


def _where(url: str | None, model: str | None) -> str:
    parts = []
    if model:
        parts.append(f"model {model!r}")
    if url:
        parts.append(f"at {url}")
    return " ".join(parts)


def to_client_error(exc: BaseException, *, url: str | None = None, model: str | None = None) -> ClientError:
    """Map an exception from tritonclient (or the transport below it) to our tree.

    HTTP 400 / gRPC INVALID_ARGUMENT → :class:`InvalidInputError` with the server's
    message; refused connections, HTTP 503 / gRPC UNAVAILABLE and unknown or
    unready models → :class:`ServerUnavailableError`; anything else →
    :class:`ClientError`. The caller chains it: ``raise to_client_error(e) from e``.
    """
    if isinstance(exc, ClientError):
        return exc
    where = _where(url, model)
    suffix = f" ({where})" if where else ""
    from tritonclient.utils import InferenceServerException

    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        message = str(exc.message() or exc)
        lowered = message.lower()
        if status in _INVALID_STATUSES and not any(hint in lowered for hint in _NOT_READY_HINTS):
            return InvalidInputError(message)
        if (
            status in _UNAVAILABLE_STATUSES
            or status in _NOT_FOUND_STATUSES
            or any(hint in lowered for hint in _NOT_READY_HINTS)
        ):
            return ServerUnavailableError(f"Triton server or model unavailable{suffix}: {message}")
        if status in _TIMEOUT_STATUSES:
            return ClientError(f"request timed out{suffix}: {message}")
        return ClientError(f"request failed{suffix}: [{status or 'no status'}] {message}")
    if isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
        return ClientError(f"request timed out{suffix}: {exc or type(exc).__name__}")
    if isinstance(exc, (ConnectionError, OSError)) or _is_aiohttp_connection_error(exc):
        return ServerUnavailableError(f"cannot connect to Triton{suffix}: {exc}")
    return ClientError(f"request failed{suffix}: {type(exc).__name__}: {exc}")


def _is_aiohttp_connection_error(exc: BaseException) -> bool:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiohttp comes with tritonclient[http]
        return False
    return isinstance(exc, aiohttp.ClientConnectionError)


@contextlib.contextmanager
def _translated(url: str, model: str) -> Iterator[None]:
    """Re-raise anything but our own errors as a ClientError, chained to the original."""
    try:
        yield
    except Hf2TritonError:
        raise
    except Exception as exc:
        raise to_client_error(exc, url=url, model=model) from exc


# --------------------------------------------------------------------------- clients


def _normalise_url(url: str | None, protocol: str) -> str:
    if protocol not in _DEFAULT_PORTS:
        raise OptionsError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
    if not url:
        return f"127.0.0.1:{_DEFAULT_PORTS[protocol]}"
    for scheme in ("http://", "grpc://"):
        if url.startswith(scheme):
            url = url[len(scheme) :]
    if "://" in url:
        raise OptionsError(f"url must be host:port (no TLS support here), got {url!r}")
    return url.rstrip("/")


class _Base:
    """What the sync and async clients share: settings, info cache, request building."""

    def __init__(
        self, url: str | None, protocol: str, model: str, timeout_s: float, info: ModelInfo | None
    ) -> None:
        self.protocol = protocol
        self.url = _normalise_url(url, protocol)
        self.model = model
        self.timeout_s = float(timeout_s)
        self._info: ModelInfo | None = info
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r}, protocol={self.protocol!r}, model={self.model!r})"

    def _module(self) -> ModuleType:
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module

    def _request(self, batch: np.ndarray, spec: _TaskSpec) -> tuple[list[Any], list[Any]]:
        module = self._module()
        text = module.InferInput(contract.INPUT_TEXT, list(batch.shape), "BYTES")
        text.set_data_from_numpy(batch)
        outputs = [module.InferRequestedOutput(name) for name in spec.outputs]
        return [text], outputs

    def _prepare(self, info: ModelInfo, batch: np.ndarray) -> tuple[_TaskSpec, list[np.ndarray]]:
        spec = _task_spec(info)
        _check_sizes(batch, info.max_text_bytes)
        chunks = chunk(batch, info.max_batch_size)
        logger.debug("%s: %d texts in %d requests to %s", self.model, len(batch), len(chunks), self.url)
        return spec, chunks

    def _check_task(self, info: ModelInfo, task: str, method: str) -> None:
        if info.task != task:
            raise ClientError(f"model {self.model!r} serves task {info.task!r}, not {task!r}: {method}() needs {task}")

    def _check_open(self) -> None:
        if self._closed:
            raise ClientError(f"{self!r} is closed")

    def _timeout_error(self, timeout_s: float, last: BaseException | None) -> ServerUnavailableError:
        detail = f": {last}" if last is not None else ""
        return ServerUnavailableError(
            f"model {self.model!r} at {self.url} ({self.protocol}) not ready after {timeout_s:g} s{detail}"
        )


def _outputs(result: Any, spec: _TaskSpec) -> dict[str, np.ndarray]:
    arrays = {name: result.as_numpy(name) for name in spec.outputs}
    return {name: array for name, array in arrays.items() if array is not None}


def _stack(results: list[Result]) -> np.ndarray:
    if not results:
        return np.empty((0, 0), dtype=np.float32)
    return np.stack([r.vector for r in results if isinstance(r, Embedding)])


class Client(_Base):
    """Synchronous client for one hf2triton ensemble (one connection per client).

    ``url`` is ``host:port`` (default ``127.0.0.1:8001`` for gRPC, ``:8000`` for
    HTTP); ``timeout_s`` bounds each network call; ``info`` (optional) is a known
    :class:`ModelInfo` that spares the config request. Use as a context manager.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        protocol: str = "grpc",
        model: str = DEFAULT_MODEL,
        timeout_s: float = 60.0,
        info: ModelInfo | None = None,
    ) -> None:
        super().__init__(url, protocol, model, timeout_s, info)
        with _translated(self.url, self.model):
            if protocol == "grpc":
                import tritonclient.grpc as grpcclient

                self._client: Any = grpcclient.InferenceServerClient(self.url)
            else:
                import tritonclient.http as httpclient

                self._client = httpclient.InferenceServerClient(
                    self.url,
                    concurrency=1,
                    connection_timeout=self.timeout_s,
                    network_timeout=self.timeout_s,
                )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; idempotent."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self._client.close()

    def _kw(self, timeout_s: float | None = None) -> dict[str, Any]:
        if self.protocol == "grpc":
            return {"client_timeout": self.timeout_s if timeout_s is None else timeout_s}
        return {}

    def _ready(self, timeout_s: float) -> bool:
        with _translated(self.url, self.model):
            return bool(
                self._client.is_server_ready(**self._kw(timeout_s))
                and self._client.is_model_ready(self.model, **self._kw(timeout_s))
            )

    def wait_for_model(self, timeout_s: float = 60.0) -> ModelInfo:
        """Poll until the server and model are ready, then read and cache the model's info.

        Raises :class:`ServerUnavailableError` naming the url and model on timeout.
        """
        self._check_open()
        deadline = time.monotonic() + timeout_s
        last: BaseException | None = None
        while True:
            remaining = deadline - time.monotonic()
            try:
                if self._ready(max(0.1, min(self.timeout_s, remaining))):
                    return self.fetch_info()
                last = ServerUnavailableError("the server answers but the server or model is not ready")
            except ServerUnavailableError as exc:
                last = exc
            if time.monotonic() + _POLL_INTERVAL_S > deadline:
                raise self._timeout_error(timeout_s, last) from last
            time.sleep(_POLL_INTERVAL_S)

    def fetch_info(self) -> ModelInfo:
        """Read the ensemble's config from the server (again) and cache it."""
        self._check_open()
        with _translated(self.url, self.model):
            if self.protocol == "grpc":
                config = self._client.get_model_config(self.model, as_json=True, **self._kw())
            else:
                config = self._client.get_model_config(self.model)
        self._info = model_info_from_config(self.model, config)
        return self._info

    @property
    def info(self) -> ModelInfo:
        """The model's :class:`ModelInfo`, read from the server on first use."""
        return self._info if self._info is not None else self.fetch_info()

    def infer(self, texts: Sequence[str] | str) -> list[Result]:
        """One result per text, in order (a single ``str`` gives a list of one)."""
        self._check_open()
        batch = encode_texts(texts)  # type and UTF-8 errors surface before any request
        if not len(batch):
            return []
        info = self.info
        spec, batches = self._prepare(info, batch)
        results: list[Result] = []
        for batch in batches:
            inputs, outputs = self._request(batch, spec)
            with _translated(self.url, self.model):
                response = self._client.infer(self.model, inputs, outputs=outputs, **self._kw())
            results.extend(decode_outputs(info, _outputs(response, spec)))
        return results

    def embed(self, texts: Sequence[str] | str) -> np.ndarray:
        """Embeddings as one float32 array ``[n, H]``; the model's task must be ``embeddings``."""
        items = _as_list(texts)
        if not items:
            return _stack([])
        self._check_task(self.info, TASK_EMBEDDINGS, "embed")
        return _stack(self.infer(items))

    def classify(self, texts: Sequence[str] | str) -> list[Classification]:
        """Classifications, one per text; the model's task must be ``sequence-classification``."""
        items = _as_list(texts)
        if not items:
            return []
        self._check_task(self.info, TASK_SEQUENCE_CLASSIFICATION, "classify")
        return [r for r in self.infer(items) if isinstance(r, Classification)]

    def entities(self, texts: Sequence[str] | str) -> list[Entities]:
        """Entities per text; the model's task must be ``token-classification``."""
        items = _as_list(texts)
        if not items:
            return []
        self._check_task(self.info, TASK_TOKEN_CLASSIFICATION, "entities")
        return [r for r in self.infer(items) if isinstance(r, Entities)]


class AsyncClient(_Base):
    """Asynchronous client (``tritonclient.grpc.aio`` / ``tritonclient.http.aio``).

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
    ) -> None:
        if max_concurrency < 1:
            raise OptionsError(f"max_concurrency must be >= 1, got {max_concurrency}")
        super().__init__(url, protocol, model, timeout_s, info)
        self.max_concurrency = max_concurrency
        self._client: Any = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; idempotent."""
        self._closed = True
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    def _connection(self) -> Any:
        self._check_open()
        if self._client is None:
            with _translated(self.url, self.model):
                if self.protocol == "grpc":
                    import tritonclient.grpc.aio as grpcaio

                    self._client = grpcaio.InferenceServerClient(self.url)
                else:
                    import tritonclient.http.aio as httpaio

                    self._client = httpaio.InferenceServerClient(
                        self.url, conn_limit=self.max_concurrency, conn_timeout=self.timeout_s
                    )
        return self._client

    def _kw(self, timeout_s: float | None = None) -> dict[str, Any]:
        if self.protocol == "grpc":
            return {"client_timeout": self.timeout_s if timeout_s is None else timeout_s}
        return {}

    async def _ready(self, timeout_s: float) -> bool:
        client = self._connection()
        with _translated(self.url, self.model):
            return bool(
                await client.is_server_ready(**self._kw(timeout_s))
                and await client.is_model_ready(self.model, **self._kw(timeout_s))
            )

    async def wait_for_model(self, timeout_s: float = 60.0) -> ModelInfo:
        """Poll until the server and model are ready, then read and cache the model's info."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last: BaseException | None = None
        while True:
            remaining = deadline - loop.time()
            try:
                if await self._ready(max(0.1, min(self.timeout_s, remaining))):
                    return await self.fetch_info()
                last = ServerUnavailableError("the server answers but the server or model is not ready")
            except ServerUnavailableError as exc:
                last = exc
            if loop.time() + _POLL_INTERVAL_S > deadline:
                raise self._timeout_error(timeout_s, last) from last
            await asyncio.sleep(_POLL_INTERVAL_S)

    async def fetch_info(self) -> ModelInfo:
        """Read the ensemble's config from the server (again) and cache it."""
        client = self._connection()
        with _translated(self.url, self.model):
            if self.protocol == "grpc":
                config = await client.get_model_config(self.model, as_json=True, **self._kw())
            else:
                config = await client.get_model_config(self.model)
        self._info = model_info_from_config(self.model, config)
        return self._info

    @property
    def info(self) -> ModelInfo:
        """The cached :class:`ModelInfo` (after ``await wait_for_model()``, ``fetch_info()`` or a call)."""
        if self._info is None:
            raise ClientError(f"{self!r} has no model info yet: await wait_for_model() or fetch_info() first")
        return self._info

    async def _info_or_fetch(self) -> ModelInfo:
        return self._info if self._info is not None else await self.fetch_info()

    async def infer(self, texts: Sequence[str] | str) -> list[Result]:
        """One result per text, in order; chunks are sent concurrently."""
        self._check_open()
        batch = encode_texts(texts)  # type and UTF-8 errors surface before any request
        if not len(batch):
            return []
        info = await self._info_or_fetch()
        spec, batches = self._prepare(info, batch)
        client = self._connection()
        gate = asyncio.Semaphore(self.max_concurrency)

        async def send(batch: np.ndarray) -> list[Result]:
            inputs, outputs = self._request(batch, spec)
            async with gate:
                with _translated(self.url, self.model):
                    response = await client.infer(self.model, inputs, outputs=outputs, **self._kw())
            return decode_outputs(info, _outputs(response, spec))

        tasks = [asyncio.ensure_future(send(batch)) for batch in batches]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [result for part in parts for result in part]

    async def embed(self, texts: Sequence[str] | str) -> np.ndarray:
        """Embeddings as one float32 array ``[n, H]``; the model's task must be ``embeddings``."""
        items = _as_list(texts)
        if not items:
            return _stack([])
        self._check_task(await self._info_or_fetch(), TASK_EMBEDDINGS, "embed")
        return _stack(await self.infer(items))

    async def classify(self, texts: Sequence[str] | str) -> list[Classification]:
        """Classifications, one per text; the model's task must be ``sequence-classification``."""
        items = _as_list(texts)
        if not items:
            return []
        self._check_task(await self._info_or_fetch(), TASK_SEQUENCE_CLASSIFICATION, "classify")
        return [r for r in await self.infer(items) if isinstance(r, Classification)]

    async def entities(self, texts: Sequence[str] | str) -> list[Entities]:
        """Entities per text; the model's task must be ``token-classification``."""
        items = _as_list(texts)
        if not items:
            return []
        self._check_task(await self._info_or_fetch(), TASK_TOKEN_CLASSIFICATION, "entities")
        return [r for r in await self.infer(items) if isinstance(r, Entities)]


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

