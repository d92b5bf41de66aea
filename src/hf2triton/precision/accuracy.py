"""The accuracy guard: a variant (fp16, int8) against the fp32 ONNX reference.

Both run in ONNX Runtime on the same held-out texts, padded per batch as served.
The figure that decides is the one users feel: mean cosine of the pooled embedding,
or top-label agreement for classifiers (the task row's comparison, :mod:`hf2triton.tasks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hf2triton.answers import answers as task_answers_of
from hf2triton.backends.onnx_model import create_session
from hf2triton.backends.tokenizer import TokenBatch, TokenizerSettings, encode_requests
from hf2triton.export.checkpoint import Checkpoint
from hf2triton.precision.options import DEFAULT_MIN_AGREEMENT
from hf2triton.tasks import METRIC_COSINE

DEFAULT_MIN_COSINE = DEFAULT_MIN_AGREEMENT  # one --min-agreement sets both


@dataclass(frozen=True)
class Accuracy:
    metric: str  # "mean_cosine" or "label_agreement"
    value: float
    worst: float  # min cosine, or the largest probability change
    threshold: float

    @property
    def passed(self) -> bool:
        return self.value >= self.threshold

    def short(self) -> str:
        worst = "min" if self.metric == "mean_cosine" else "max |Δp|"
        verdict = "ok" if self.passed else f"FAIL < {self.threshold}"
        return f"{self.metric} {self.value:.4f} ({worst} {self.worst:.4f}) {verdict}"

    def summary(self) -> str:
        worst = "min cosine" if self.metric == "mean_cosine" else "max |Δp|"
        return f"{self.metric} {self.value:.4f} (threshold {self.threshold}), {worst} {self.worst:.4f}"


@dataclass(frozen=True)
class EvaluationSet:
    """Held-out texts tokenized once, with the fp32 reference's task answers."""

    batches: tuple[TokenBatch, ...]
    reference: np.ndarray  # [n, H] unit embeddings, or [n, L] probabilities

    @property
    def texts(self) -> int:
        return len(self.reference)


def task_answers(session, batches, checkpoint: Checkpoint) -> np.ndarray:
    """Unit-normalised embeddings, class probabilities per text, or per real token (NER)."""
    output = checkpoint.task.model_output
    return np.concatenate([
        task_answers_of(
            checkpoint.task, session.run([output], batch.arrays)[0].astype(np.float32),
            batch.arrays["attention_mask"], checkpoint.pooling.mode, checkpoint.multi_label,
        )
        for batch in batches
    ])


def evaluation_set(
    reference_onnx: Path, checkpoint: Checkpoint, tokenizer, settings: TokenizerSettings,
    texts: list[str], batch_size: int = 16,
) -> EvaluationSet:
    groups = [texts[i : i + batch_size] for i in range(0, len(texts), batch_size)]
    batches = tuple(encode_requests(tokenizer, groups, settings))
    return EvaluationSet(batches, task_answers(create_session(reference_onnx), batches, checkpoint))


def measure(
    candidate_onnx: Path, evaluation: EvaluationSet, checkpoint: Checkpoint,
    min_cosine: float = DEFAULT_MIN_COSINE, min_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> Accuracy:
    answers = task_answers(create_session(candidate_onnx), evaluation.batches, checkpoint)
    return compare(evaluation.reference, answers, checkpoint, min_cosine, min_agreement)


def compare(
    reference: np.ndarray, answers: np.ndarray, checkpoint: Checkpoint,
    min_cosine: float = DEFAULT_MIN_COSINE, min_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> Accuracy:
    comparison = checkpoint.task.comparison
    scores = comparison.scores(reference, answers, multi_label=checkpoint.multi_label)
    if comparison.metric == METRIC_COSINE:
        return Accuracy(comparison.accuracy_metric, float(scores.mean()), float(scores.min()), min_cosine)
    worst = float(np.abs(reference - answers).max())  # the largest probability change
    return Accuracy(comparison.accuracy_metric, float(scores.mean()), worst, min_agreement)
