"""What a served hf2triton ensemble answers, as typed results, and what it publishes about itself.

:class:`ModelInfo` is read from the ensemble's model config (:func:`model_info_from_config`);
:func:`decode_outputs` turns one response's output arrays into one result per text,
choosing the decoder by the task row's ``answer`` (:mod:`hf2triton.tasks`). Pure
functions on numpy arrays: no server, no tritonclient.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from hf2triton import contract, tasks
from hf2triton.errors import ClientError


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
    text_pair: bool = False  # the model takes a second text per row (TEXT_PAIR)
    activation: str = ""  # rerank: what turned the logit into the score
    prompts: tuple[str, ...] = ()  # embeddings: the prompt names a request may give (``prompt_name``)
    default_prompt_name: str = ""  # the prompt applied when a request names none ("" = none)
    max_windows: int = 0  # > 0: long texts are served in up to this many windows, else truncated
    stride: int = 0  # tokens consecutive windows share


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


@dataclass(frozen=True)
class Score:
    """One (query, document) pair's relevance score from a reranker (cross-encoder)."""

    score: float
    truncated: bool


@dataclass(frozen=True)
class RerankResult:
    """One document of a :meth:`~hf2triton.client.Client.rerank` call: its position in the list
    sent (``index``), its score, and the document itself when ``return_documents`` was asked."""

    index: int
    score: float
    document: str | None = None
    truncated: bool = False


Result = Union[Embedding, Classification, Entities, Score]

# The result type of each answer kind a task row can name.
RESULT_TYPES: dict[str, type] = {
    tasks.ANSWER_EMBEDDING: Embedding,
    tasks.ANSWER_CLASSIFICATION: Classification,
    tasks.ANSWER_ENTITIES: Entities,
    tasks.ANSWER_SCORE: Score,
}


# --------------------------------------------------------------------------- decoding


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


def _decode_classifications(info: ModelInfo, outputs: Mapping[str, np.ndarray]) -> list[Result]:
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


def _decode_entities(info: ModelInfo, outputs: Mapping[str, np.ndarray]) -> list[Result]:
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


def _decode_scores(info: ModelInfo, outputs: Mapping[str, np.ndarray]) -> list[Result]:
    scores = _rows(outputs, contract.OUTPUT_SCORES, None)
    if scores.ndim != 2 or scores.shape[1] != 1:
        raise ClientError(f"output {contract.OUTPUT_SCORES!r} has shape {list(scores.shape)}, expected [n, 1]")
    truncated = _truncated_flags(outputs, scores.shape[0])
    return [Score(score=float(scores[i, 0]), truncated=truncated[i]) for i in range(scores.shape[0])]


def rank_order(scores: Sequence[float], top_n: int | None = None) -> list[int]:
    """Document indices by score, best first (ties keep the order sent), at most ``top_n`` of them.

    The one ranking rule of ``Client.rerank`` and the gateway's rerank routes."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    return order if top_n is None else order[:top_n]


def ranked(scores: list[Score], documents: list[str], top_n: int | None, return_documents: bool) -> list[RerankResult]:
    """Documents by score, best first (ties keep the order sent), at most ``top_n`` of them."""
    return [RerankResult(i, scores[i].score, documents[i] if return_documents else None, scores[i].truncated)
            for i in rank_order([s.score for s in scores], top_n)]


_DECODERS: dict[str, Callable[[ModelInfo, Mapping[str, np.ndarray]], list[Result]]] = {
    tasks.ANSWER_EMBEDDING: _decode_embeddings,
    tasks.ANSWER_CLASSIFICATION: _decode_classifications,
    tasks.ANSWER_ENTITIES: _decode_entities,
    tasks.ANSWER_SCORE: _decode_scores,
}


def task_of(info: ModelInfo) -> tasks.Task:
    """The task row of the served model; a :class:`ClientError` for a task this client does not know."""
    task = tasks.TASKS.get(info.task)
    if task is None or task.answer not in _DECODERS:
        raise ClientError(
            f"model {info.name!r} serves task {info.task!r}, which this client cannot decode "
            f"(supported: {', '.join(sorted(tasks.TASKS))})"
        )
    return task


def decode_outputs(info: ModelInfo, outputs: Mapping[str, np.ndarray]) -> list[Result]:
    """Turn one response's output arrays into one typed result per text, in order."""
    return _DECODERS[task_of(info).answer](info, outputs)


def stack_embeddings(results: list[Result]) -> np.ndarray:
    """Embedding results as one float32 array ``[n, H]`` (``[0, 0]`` for none)."""
    if not results:
        return np.empty((0, 0), dtype=np.float32)
    return np.stack([r.vector for r in results if isinstance(r, Embedding)])


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
    labels = _json_param(name, params, contract.PARAM_LABELS, list)
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
        text_pair=params.get(contract.PARAM_TEXT_PAIR, "false").strip().lower() == "true",
        activation=params.get(contract.PARAM_ACTIVATION, "").strip(),
        prompts=tuple(_prompt_names(name, params)),
        default_prompt_name=params.get(contract.PARAM_DEFAULT_PROMPT, "").strip(),
        max_windows=_int_param(name, params, contract.PARAM_MAX_WINDOWS),
        stride=_int_param(name, params, contract.PARAM_STRIDE),
    )


def _prompt_names(name: str, params: Mapping[str, str]) -> list[str]:
    return sorted(str(k) for k in _json_param(name, params, contract.PARAM_PROMPTS, dict))


def _json_param(name: str, params: Mapping[str, str], key: str, kind: type[list] | type[dict]) -> Any:
    """A JSON list or object parameter of model ``name`` (absent or empty: an empty one)."""
    raw = params.get(key, "").strip()
    if not raw:
        return kind()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ClientError(f"model {name!r}: parameter {key} is not JSON: {exc}") from exc
    if not isinstance(value, kind):
        shape = "list" if kind is list else "object"
        raise ClientError(f"model {name!r}: parameter {key} must be a JSON {shape}, got {raw!r}")
    return value
