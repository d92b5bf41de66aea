"""``verify``: check a served ensemble end to end against its checkpoint run in PyTorch.

The served answer (tokenizer step, model step and postprocess included) is compared
with what a user of the checkpoint would compute with transformers itself:

- embeddings: cosine with the checkpoint's pooling (sentence-transformers when the
  checkpoint is one, else the pooling ``hf2triton`` detected) of ``AutoModel`` outputs;
- sequence-classification: top label and every probability of
  ``AutoModelForSequenceClassification`` (softmax, or sigmoid for multi-label);
- token-classification: transformers' ``TokenClassificationPipeline`` with the served
  aggregation: the same entities (label, start, end, word) with scores within tolerance;
- rerank: ``sentence_transformers.CrossEncoder(checkpoint).predict(pairs)`` (its configured
  activation): every score within ``Tolerance.rerank_atol``.

Models that take text pairs (``TEXT_PAIR``) are checked on pairs too: each text with the
text at the mirrored position (:func:`hf2triton.export.parity.text_pairs`), tokenized by
the reference as ``tokenizer(text, text_pair)``; a reranker is checked on pairs only.

The reference truncates at the served max length, as the served tokenizer does. What
is compared is the task row's ``comparison.served`` (:mod:`hf2triton.tasks`); the
reference model class is the row's ``auto_model``.

Windowed deployments (the config's ``hf2triton.max_windows`` > 0) also get a text several
windows long: entities from the pipeline with the served ``stride``, embeddings from the
chunked definition (:func:`reference_chunked`). Embedding models are also asked for each of
their prompts and for half their dimensions (request parameters ``prompt_name``,
``dimensions``), compared with ``SentenceTransformer.encode(prompt_name=, truncate_dim=)``.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hf2triton import tasks
from hf2triton.client.base import embedding_parameters
from hf2triton.client.results import Classification, Embedding, Entities, ModelInfo, Result, Score
from hf2triton.client.sync import Client
from hf2triton.errors import CheckpointError
from hf2triton.export.parity import VERIFY_TEXTS, text_pairs
from hf2triton.repository import MANIFEST

log = logging.getLogger(__name__)

PROTOCOLS = ("grpc", "http")


@dataclass(frozen=True)
class Tolerance:
    min_cosine: float = 0.9999  # embeddings
    score_atol: float = 1e-3  # probabilities and entity scores
    rerank_atol: float = 1e-4  # rerank scores against CrossEncoder.predict


@dataclass(frozen=True)
class TextCheck:
    """One text's served answer over one protocol, compared with the reference."""

    protocol: str
    index: int
    text: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    model: str
    task: str
    checkpoint: Path
    checks: tuple[TextCheck, ...]
    skipped: tuple[int, ...] = ()  # indices of texts over the served byte limit (refused by design)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(check.passed for check in self.checks)

    def table(self, width: int = 40) -> list[str]:
        """One line per text and protocol: verdict, text, what was compared."""
        lines = [f"{'protocol':<8} {'#':>3}  {'result':<8} {'text':<{width}}  detail"]
        for check in self.checks:
            shown = check.text if len(check.text) <= width else check.text[: width - 3] + "..."
            verdict = "ok" if check.passed else "MISMATCH"
            lines.append(f"{check.protocol:<8} {check.index:>3}  {verdict:<8} {shown!r:<{width}}  {check.detail}")
        return lines

    def summary(self) -> str:
        failed = [c for c in self.checks if not c.passed]
        protocols = sorted({c.protocol for c in self.checks})
        verdict = "passed" if self.passed else "FAILED"
        skipped = (f"; {len(self.skipped)} texts over the served byte limit or max windows not compared"
                   if self.skipped else "")
        return (
            f"verify {verdict}: {len(self.checks) - len(failed)}/{len(self.checks)} answers of model "
            f"'{self.model}' ({self.task}) over {', '.join(protocols)} match {self.checkpoint}{skipped}"
        )


def read_texts(path: Path) -> tuple[str, ...]:
    """One text per line (a trailing newline ends the last line, it is no extra text)."""
    try:
        return tuple(path.read_text(encoding="utf-8").splitlines())
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read texts from {path}: {exc}") from None


def checkpoint_from_manifest(repository: Path, model: str) -> Path:
    """The checkpoint recorded in ``repository/model/hf2triton.json`` at export."""
    manifest = repository / model / MANIFEST
    try:
        return Path(json.loads(manifest.read_text())["checkpoint"]["path"])
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"cannot read the checkpoint path from {manifest}: {exc}; pass --checkpoint") from None


# ----------------------------------------------------------------- references (PyTorch)


def _tokenizer(checkpoint: Path, max_length: int):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint, model_max_length=max_length)


def _load(auto_class: str, checkpoint: Path):
    import transformers

    try:
        return getattr(transformers, auto_class).from_pretrained(checkpoint).eval()
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load {checkpoint} with {auto_class}: {exc}") from None


def _batches(texts: Sequence[str], size: int = 8) -> list[list[str]]:
    return [list(texts[i : i + size]) for i in range(0, len(texts), size)]


def _pooled(hidden, mask, mode: str):
    import torch

    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).max(dim=1).values
    summed, counts = (hidden * weights).sum(dim=1), weights.sum(dim=1).clamp(min=1e-9)
    return summed / (counts.sqrt() if mode == "mean_sqrt_len" else counts)


def reference_embeddings(
    checkpoint: Path, texts: Sequence[str], info: ModelInfo, task: tasks.Task,
    prompt_name: str | None = None, dimensions: int | None = None, pairs: Sequence[str] | None = None,
) -> np.ndarray:
    """sentence-transformers for its checkpoints (with ``prompt_name`` and ``truncate_dim``); else
    AutoModel with the detected pooling; windowed deployments: :func:`reference_chunked`.
    ``pairs`` is always None here: embedders take no text pairs."""
    import torch

    from hf2triton.export.checkpoint import sentence_transformers_pooling

    if info.max_windows:
        return reference_chunked(checkpoint, texts, info, prompt_name, dimensions)
    if (checkpoint / "modules.json").exists():
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(checkpoint), device="cpu")
        model.max_seq_length = info.max_sequence_length
        return model.encode(list(texts), batch_size=8, convert_to_numpy=True, prompt_name=prompt_name,
                            truncate_dim=dimensions)
    pooling = sentence_transformers_pooling(checkpoint)
    tokenizer, model = _tokenizer(checkpoint, info.max_sequence_length), _load(task.auto_model, checkpoint)
    parts = []
    for batch in _batches(texts):
        encoded = tokenizer(batch, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**encoded).last_hidden_state
        pooled = _pooled(hidden, encoded["attention_mask"], pooling.mode)
        parts.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
    return np.concatenate(parts)[:, :dimensions]


def reference_chunked(
    checkpoint: Path, texts: Sequence[str], info: ModelInfo, prompt_name: str | None = None,
    dimensions: int | None = None,
) -> np.ndarray:
    """``--long-text chunk`` in PyTorch: the prompt put before the text (as sentence-transformers
    does), transformers' windows (``return_overflowing_tokens``, the served stride), each pooled
    over its attention mask, the token-count-weighted mean of a text's windows, normalised as the
    checkpoint says, the first ``dimensions`` components kept. Texts past ``max_windows`` windows
    are not compared (they are cut, reported in TRUNCATED)."""
    import torch

    from hf2triton.export.checkpoint import sentence_transformers_pooling, sentence_transformers_prompts

    prompts, default = sentence_transformers_prompts(checkpoint)
    prompt = dict(prompts).get(prompt_name or default, "")
    pooling = sentence_transformers_pooling(checkpoint)
    tokenizer, model = _tokenizer(checkpoint, info.max_sequence_length), _load("AutoModel", checkpoint)
    vectors = []
    for text in texts:
        encoded = tokenizer(prompt + text, truncation=True, stride=info.stride, return_overflowing_tokens=True,
                            padding=True, return_tensors="pt")
        encoded.pop("overflow_to_sample_mapping", None)
        with torch.no_grad():
            hidden = model(**encoded).last_hidden_state
        pooled = _pooled(hidden, encoded["attention_mask"], pooling.mode)
        counts = encoded["attention_mask"].sum(dim=1, keepdim=True).to(pooled.dtype)
        merged = (pooled * counts).sum(dim=0) / counts.sum()
        vector = torch.nn.functional.normalize(merged, dim=0) if pooling.normalize else merged
        vectors.append(vector[:dimensions].numpy())
    return np.stack(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)


def reference_probabilities(checkpoint: Path, texts: Sequence[str], info: ModelInfo, task: tasks.Task,
                            pairs: Sequence[str] | None = None) -> np.ndarray:
    """Probabilities of ``AutoModelForSequenceClassification``; with ``pairs`` on ``tokenizer(text, pair)``
    (``longest_first`` truncation), as ``pipeline("text-classification")`` computes them."""
    import torch

    tokenizer = _tokenizer(checkpoint, info.max_sequence_length)
    model = _load(task.auto_model, checkpoint)
    if pairs is not None and task.empty_pair_alone and not all(pairs):
        # The pipeline encodes a text with an empty text_pair alone (tokenizer(text, text_pair="")).
        alone = [i for i, pair in enumerate(pairs) if not pair]
        both = [i for i, pair in enumerate(pairs) if pair]
        result = np.zeros((len(texts), len(info.labels) or 1))
        if alone:
            result[alone] = reference_probabilities(checkpoint, [texts[i] for i in alone], info, task)
        if both:
            result[both] = reference_probabilities(checkpoint, [texts[i] for i in both], info, task,
                                                   [pairs[i] for i in both])
        return result
    parts = []
    second = _batches(pairs) if pairs is not None else [None] * len(_batches(texts))
    for batch, batch_pairs in zip(_batches(texts), second):
        encoded = tokenizer(batch, batch_pairs, padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            logits = model(**encoded).logits
        parts.append((torch.sigmoid(logits) if info.multi_label else torch.softmax(logits, -1)).numpy())
    return np.concatenate(parts)


def reference_entities(checkpoint: Path, texts: Sequence[str], info: ModelInfo, task: tasks.Task,
                       pairs: Sequence[str] | None = None) -> list[list[dict]]:
    from transformers import pipeline

    ner = pipeline(
        "token-classification",  # transformers' pipeline name, which groups token labels into entities
        model=_load(task.auto_model, checkpoint),
        tokenizer=_tokenizer(checkpoint, info.max_sequence_length),
        aggregation_strategy=info.aggregation or "simple",
        device="cpu",
        **({"stride": info.stride} if info.max_windows else {}),  # windows merged as served
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "does not support real words": the pipeline's heuristic applies
        return [ner(text) if text else [] for text in texts]  # the pipeline refuses "" (served: no entities)


def reference_scores(checkpoint: Path, texts: Sequence[str], info: ModelInfo, task: tasks.Task,
                     pairs: Sequence[str] | None = None) -> np.ndarray:
    """``CrossEncoder(checkpoint).predict`` on (text, pair) rows, truncated at the served max length."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(checkpoint), device="cpu", max_length=info.max_sequence_length)
    rows = list(zip(texts, pairs if pairs is not None else [""] * len(texts)))
    return np.asarray(model.predict(rows, batch_size=8, show_progress_bar=False), dtype=np.float64).reshape(-1)


# ----------------------------------------------------------------- comparisons


def _unexpected(served: Result, expected_type: type) -> tuple[bool, str]:
    return False, f"served a {type(served).__name__}, expected a {expected_type.__name__}"


def compare_embedding(served: Result, expected: np.ndarray, info: ModelInfo, tolerance: Tolerance) -> tuple[bool, str]:
    if not isinstance(served, Embedding):
        return _unexpected(served, Embedding)
    if served.vector.shape != expected.shape:
        return False, f"dimension {served.vector.shape[0]} served, {expected.shape[0]} expected"
    cosine = float(tasks.cosines(served.vector, expected)[0])
    return cosine >= tolerance.min_cosine, f"cosine {cosine:.6f} (min {tolerance.min_cosine})"


def compare_classification(
    served: Result, expected: np.ndarray, info: ModelInfo, tolerance: Tolerance
) -> tuple[bool, str]:
    if not isinstance(served, Classification):
        return _unexpected(served, Classification)
    if len(expected) != len(served.scores):
        return False, f"{len(served.scores)} labels served, {len(expected)} expected"
    names = info.labels or tuple(served.scores)
    top = names[int(expected.argmax())]
    diff = float(np.max(np.abs(np.array([served.scores.get(n, np.nan) for n in names]) - expected)))
    same_top = served.label == top or abs(served.score - float(expected.max())) <= tolerance.score_atol  # a tie
    passed = same_top and diff <= tolerance.score_atol
    return passed, f"{served.label} ({served.score:.4f}) vs {top} ({float(expected.max()):.4f}), max |Δp| {diff:.1e}"


def compare_entities(served: Result, expected: list[dict], info: ModelInfo, tolerance: Tolerance) -> tuple[bool, str]:
    if not isinstance(served, Entities):
        return _unexpected(served, Entities)
    got = [(e.label, e.start, e.end, e.word) for e in served.entities]
    want = [(e.get("entity_group", e.get("entity")), int(e["start"]), int(e["end"]), e["word"]) for e in expected]
    if got != want:
        first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
        shown = lambda spans: spans[first][:3] if first < len(spans) else "nothing"  # noqa: E731
        return False, f"{len(got)} vs {len(want)} entities; #{first}: served {shown(got)}, expected {shown(want)}"
    diff = max((abs(e.score - float(x["score"])) for e, x in zip(served.entities, expected)), default=0.0)
    return diff <= tolerance.score_atol, f"{len(got)} entities, max |Δscore| {diff:.1e}"


def compare_score(served: Result, expected: float, info: ModelInfo, tolerance: Tolerance) -> tuple[bool, str]:
    if not isinstance(served, Score):
        return _unexpected(served, Score)
    diff = abs(served.score - float(expected))
    return diff <= tolerance.rerank_atol, f"score {served.score:.6f} vs {float(expected):.6f}, |Δ| {diff:.1e}"


@dataclass(frozen=True)
class _Check:
    """How one kind of served answer is computed in PyTorch and compared."""

    reference: Callable[..., Sequence]  # (checkpoint, texts, info, task, pairs=None)
    compare: Callable[[Result, Any, ModelInfo, Tolerance], tuple[bool, str]]


# Keyed by the task row's ``comparison.served``: a new task reuses one or adds an answer kind.
_CHECKS = {
    tasks.ANSWER_EMBEDDING: _Check(reference_embeddings, compare_embedding),
    tasks.ANSWER_CLASSIFICATION: _Check(reference_probabilities, compare_classification),
    tasks.ANSWER_ENTITIES: _Check(reference_entities, compare_entities),
    tasks.ANSWER_SCORE: _Check(reference_scores, compare_score),
}


def served_answers(
    url: str, protocol: str, model: str, texts: Sequence[str], timeout_s: float,
    tls: Mapping[str, Any] | None = None, parameters: dict | None = None, pairs: Sequence[str] | None = None,
) -> list[Result]:
    with Client(url, protocol=protocol, model=model, **(tls or {})) as client:
        client.wait_for_model(timeout_s=timeout_s)
        return client.infer(list(texts), text_pair=None if pairs is None else list(pairs), parameters=parameters)


def long_text(info: ModelInfo, texts: Sequence[str]) -> str:
    """A text of about three windows (at least three times the max length in characters, four per
    token), within the served byte limit."""
    pieces, size = [], 0
    target = 12 * max(info.max_sequence_length, 16)
    limit = info.max_text_bytes or 1 << 30
    short = [t for t in texts if t.strip() and len(t) < 4 * max(info.max_sequence_length, 16)]
    for text in (t for _ in range(1000) for t in short):
        if size >= target or size + len(text.encode()) + 1 > limit:
            break
        pieces.append(text)
        size += len(text.encode()) + 1
    return " ".join(pieces)


def over_windows(checkpoint: Path, texts: Sequence[str], info: ModelInfo) -> list[int]:
    """Indices of texts that need more windows than served (the server cuts and reports them;
    the reference would read them whole, so they are not compared)."""
    tokenizer = _tokenizer(checkpoint, info.max_sequence_length)
    counts = [len(tokenizer(text, truncation=True, stride=info.stride, return_overflowing_tokens=True)["input_ids"])
              for text in texts]
    return [k for k, count in enumerate(counts) if count > info.max_windows]


def option_cases(info: ModelInfo, width: int) -> list[tuple[str | None, int | None]]:
    """The request options an embedding deployment is checked with: each prompt, half the dimensions."""
    return [(name, None) for name in info.prompts] + [(None, max(1, width // 2))]


def check_options(
    model: str, checkpoint: Path, urls: dict[str, str], info: ModelInfo, texts: Sequence[str], indices: Sequence[int],
    width: int, tolerance: Tolerance, timeout_s: float, tls: Mapping[str, Any] | None = None,
) -> list[TextCheck]:
    """Prompts and dimensions over every protocol, compared with the reference given the same options."""
    checks = []
    task = tasks.TASKS[info.task]
    for prompt_name, dimensions in option_cases(info, width):
        expected = reference_embeddings(checkpoint, texts, info, task, prompt_name, dimensions)
        options = ", ".join(f"{k}={v}" for k, v in (("prompt_name", prompt_name), ("dimensions", dimensions)) if v)
        for protocol, url in urls.items():
            served = served_answers(url, protocol, model, texts, timeout_s, tls,
                                    embedding_parameters(prompt_name, dimensions))
            for index, text, answer, reference in zip(indices, texts, served, expected):
                passed, detail = compare_embedding(answer, reference, info, tolerance)
                checks.append(TextCheck(protocol, index, text, passed, f"{options}: {detail}"))
    return checks


def served_info(url: str, protocol: str, model: str, timeout_s: float,
                tls: Mapping[str, Any] | None = None) -> ModelInfo:
    with Client(url, protocol=protocol, model=model, **(tls or {})) as client:
        return client.wait_for_model(timeout_s=timeout_s)


def within_limit(texts: Sequence[str], max_text_bytes: int) -> tuple[list[int], list[int]]:
    """Indices of the texts the server accepts, and of those it refuses by its byte limit."""
    sizes = [len(text.encode("utf-8")) for text in texts]
    kept = [i for i, size in enumerate(sizes) if not 0 < max_text_bytes < size]
    return kept, [i for i in range(len(texts)) if i not in set(kept)]


def verify(
    model: str,
    checkpoint: Path,
    urls: dict[str, str],
    texts: Sequence[str] = VERIFY_TEXTS,
    tolerance: Tolerance = Tolerance(),
    timeout_s: float = 60.0,
    tls: Mapping[str, Any] | None = None,
) -> VerifyReport:
    """Send ``texts`` over each protocol in ``urls`` ({"grpc": host:port, ...}) and compare.

    ``tls``: the :class:`Client`'s TLS keywords (``ssl``, ``root_certificates``, ...).
    """
    if not texts:
        raise CheckpointError("no texts to verify with")
    checkpoint = Path(checkpoint).expanduser().resolve()
    if not (checkpoint / "config.json").exists():
        raise CheckpointError(f"{checkpoint} is not a checkpoint directory (no config.json)")
    protocol, url = next(iter(urls.items()))
    info = served_info(url, protocol, model, timeout_s, tls)
    task = tasks.TASKS.get(info.task)
    if task is None or task.comparison.served not in _CHECKS:
        raise CheckpointError(f"model {model!r} serves task {info.task!r}, which verify cannot check")
    check = _CHECKS[task.comparison.served]
    if info.max_windows:
        texts = (*texts, long_text(info, texts))
    kept, skipped = within_limit(texts, info.max_text_bytes)
    if info.max_windows:
        over = set(over_windows(checkpoint, [texts[i] for i in kept], info))
        skipped = sorted(skipped + [kept[k] for k in over])
        kept = [i for k, i in enumerate(kept) if k not in over]
    sent = [texts[i] for i in kept]
    checks: list[TextCheck] = []
    answers: dict[str, list[Result]] = {}
    for firsts, pairs in checked_inputs(sent, task, info):
        answers = {protocol: served_answers(url, protocol, model, firsts, timeout_s, tls, pairs=pairs)
                   for protocol, url in urls.items()}
        log.info("running %s in PyTorch on %d %s", checkpoint, len(firsts), "texts" if pairs is None else "pairs")
        expected = check.reference(checkpoint, firsts, info, task, pairs=pairs) if firsts else []
        shown = firsts if pairs is None else [f"{a} | {b}" for a, b in zip(firsts, pairs)]
        for protocol, results in answers.items():
            for index, text, served, reference in zip(kept, shown, results, expected):
                passed, detail = check.compare(served, reference, info, tolerance)
                checks.append(TextCheck(protocol, index, text, passed, detail))
    # Embedders take no pairs: ``answers`` holds the texts alone. Options only once those match.
    if task.answer == tasks.ANSWER_EMBEDDING and sent and all(c.passed for c in checks):
        width = len(next(iter(answers.values()))[0].vector)
        checks += check_options(model, checkpoint, urls, info, sent, kept, width, tolerance, timeout_s, tls)
    return VerifyReport(model, info.task, checkpoint, tuple(checks), tuple(skipped))


def checked_inputs(texts: list[str], task: tasks.Task, info: ModelInfo) -> list[tuple[list[str], list[str] | None]]:
    """What verify sends: the texts alone (not to a reranker, which scores pairs), and, where the
    model takes pairs, each text with the text at the mirrored position."""
    runs: list[tuple[list[str], list[str] | None]] = [] if task.single_label else [(list(texts), None)]
    if info.text_pair and texts:
        pairs = text_pairs(tuple(texts))
        runs.append(([a for a, _ in pairs], [b for _, b in pairs]))
    return runs
