"""Parity check: the ONNX file in ONNX Runtime against the checkpoint in PyTorch.

Both run on the same padded batches of mixed lengths (short, past the max length,
non-English, emoji, empty), tokenized by the served tokenizer code; models that take text
pairs are checked on pairs too (each text with another, the long one with the long one). Raw outputs are
compared on real (non-padding) positions only — padded positions carry no meaning —
and the task-level answer is compared as the user sees it (cosine of the pooled
embedding; agreement of the top label; for token classification, agreement of
every real token's label, since entities are built from those).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hf2triton.answers import comparable
from hf2triton.backends.onnx_model import create_session
from hf2triton.backends.tokenizer import TokenizerSettings, alone_when_empty, encode_pair_requests, encode_requests
from hf2triton.export.checkpoint import Checkpoint
from hf2triton.errors import ExportError, ParityError

log = logging.getLogger(__name__)

LONG_TEXT = " ".join(["The quick brown fox jumps over the lazy dog near the riverbank."] * 120)

# Varied on purpose: lengths from empty to far past any max length, scripts, emoji.
PARITY_TEXTS = (
    "I loved this film, the acting was superb!",
    "Terrible service. Never again.",
    "",
    "ok",
    LONG_TEXT,
    "Der Kaffee war kalt, aber die Bedienung war freundlich.",
    "Le film était long mais magnifique, je le recommande vivement.",
    "这家餐厅的菜非常好吃，服务也很周到。",
    "今日はとても良い天気ですね。散歩に行きましょう。",
    "Это был лучший концерт в моей жизни!",
    "هذا المنتج رائع جدا وأنصح به",
    "Great job 🎉🎉🔥 totally worth it 👍🏽",
    "Cafe\u0301 na\u00efve re\u0301sume\u0301 — combining marks and dashes",
    "   leading and trailing spaces   ",
    "Numbers 3.14159, dates 2026-11-23, and URLs https://example.com/a?b=c",
    "A medium-length sentence about distributed inference servers, dynamic batching "
    "and the tokenizers that feed them with padded tensors of token ids.",
)

# Entity-rich sentences (people, places, organisations, subwords, accents) for token classification.
ENTITY_TEXTS = (
    "John Smith lives in New York and works for Acme Corporation in Berlin.",
    "Angela Merkel met Emmanuel Macron at the Élysée Palace on Tuesday.",
    "Dr. Ngozi Okonjo-Iweala leads the World Trade Organization in Genève.",
    "São Paulo, München and Zürich — José Álvarez flew with Lufthansa ✈️ yesterday.",
)
# What ``hf2triton verify`` sends by default: both sets.
VERIFY_TEXTS = PARITY_TEXTS + ENTITY_TEXTS


def text_pairs(texts: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Each text with the text at the mirrored position: long with short, empty with non-empty,
    and (odd counts) the middle text with itself."""
    return tuple(zip(texts, texts[::-1]))


def pair_batches(pairs: tuple[tuple[str, str], ...], batch_size: int) -> tuple[list[list[str]], list[list[str]]]:
    """Pairs in consecutive batches: the first texts and the second texts of each batch."""
    groups = [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]
    return [[a for a, _ in g] for g in groups], [[b for _, b in g] for g in groups]


@dataclass(frozen=True)
class ParityReport:
    task: str
    texts: int
    batches: int
    truncated_texts: int
    max_abs_diff: float
    atol: float
    metric: str  # the task's comparison.parity_metric: "min_cosine", "label_agreement" or "token_label_agreement"
    metric_value: float
    metric_threshold: float
    passed: bool

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"parity {verdict}: max |onnx - torch| = {self.max_abs_diff:.2e} (atol {self.atol:.0e}), "
            f"{self.metric} = {self.metric_value:.6f} (threshold {self.metric_threshold}) "
            f"over {self.texts} texts in {self.batches} padded batches, {self.truncated_texts} truncated"
        )

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path


def batches_of_mixed_length(texts: tuple[str, ...], batch_size: int) -> list[list[str]]:
    """Interleave long and short texts so every batch pads short rows heavily."""
    by_length = sorted(texts, key=len)
    mixed = [by_length[i // 2] if i % 2 == 0 else by_length[-1 - i // 2] for i in range(len(by_length))]
    return [mixed[i : i + batch_size] for i in range(0, len(mixed), batch_size)]


def _torch_outputs(model: torch.nn.Module, feed: dict[str, np.ndarray], output: str) -> np.ndarray:
    try:
        with torch.no_grad():
            result = model(**{name: torch.from_numpy(array) for name, array in feed.items()})
    except (IndexError, RuntimeError, ValueError) as exc:
        shape = "×".join(str(d) for d in feed["input_ids"].shape)
        raise ExportError(f"the PyTorch reference failed on a {shape} token batch: {exc}; "
                          "is --max-length within the model's position embeddings?") from exc
    return result[output].float().numpy()


def check_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    checkpoint: Checkpoint,
    tokenizer,
    settings: TokenizerSettings,
    atol: float = 1e-4,
    texts: tuple[str, ...] = PARITY_TEXTS,
    batch_size: int = 4,
) -> ParityReport:
    """Compare PyTorch and ONNX Runtime on ``texts``; the report says whether it passed."""
    session = create_session(onnx_path)
    task = checkpoint.task
    groups = batches_of_mixed_length(texts, batch_size)
    token_batches = encode_requests(tokenizer, groups, settings)
    pairs = text_pairs(texts) if task.text_pairs else ()
    if pairs:  # the pair template and token types are served too: check them
        firsts, seconds = pair_batches(pairs, batch_size)
        if task.empty_pair_alone:
            seconds = [alone_when_empty(group) for group in seconds]
        token_batches += encode_pair_requests(tokenizer, firsts, seconds, settings)
    comparison = task.comparison
    max_diff, scores, truncated = 0.0, [], 0
    for batch in token_batches:
        feed = {name: batch.arrays[name] for name in checkpoint.input_names}  # not the offsets
        reference = _torch_outputs(model, feed, task.model_output)
        candidate = session.run([task.model_output], feed)[0]
        mask = batch.arrays["attention_mask"].astype(bool)
        real = (lambda a: a[mask]) if task.model_output_has_sequence_axis else (lambda a: a)
        max_diff = max(max_diff, float(np.abs(real(candidate) - real(reference)).max()))
        truncated += int(batch.truncated.sum())
        a, b = (comparable(task, raw, mask, checkpoint.pooling.mode) for raw in (reference, candidate))
        scores.extend(comparison.scores(a, b, atol=atol).tolist())  # labels: a tie within atol agrees
    metric, threshold = comparison.parity_metric, comparison.parity_threshold
    value = comparison.parity_value(np.array(scores))
    ok = value >= threshold
    report = ParityReport(
        task=task.name,
        texts=len(texts) + len(pairs),
        batches=len(token_batches),
        truncated_texts=truncated,
        max_abs_diff=max_diff,
        atol=atol,
        metric=metric,
        metric_value=value,
        metric_threshold=threshold,
        passed=ok and max_diff <= atol,
    )
    log.info(report.summary())
    return report


def require_parity(report: ParityReport, allow_failure: bool) -> None:
    if report.passed:
        return
    message = report.summary() + (
        ". The ONNX export does not reproduce PyTorch; raise --atol only if the difference is "
        "expected, or pass --allow-parity-failure to write the repository anyway."
    )
    if not allow_failure:
        raise ParityError(message)
    log.warning(message)
