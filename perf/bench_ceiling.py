"""In-process ceilings: the served ONNX file with ONNX Runtime, no server in between.

The ceiling is tokens without padding: batches of 32 texts in arrival order pad every
text to the batch's longest, batches of texts sorted by length first carry almost no
padding (measured 78 vs 288 texts/s on the same file). A server is compared with the
length-sorted figure; arrival order and batch 1 are printed beside it.

Each batch is tokenized (the served tokenizer.json, its own padding removed), padded to
its longest text, run, mean-pooled and normalised with the served postprocess code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hf2triton.backends import fused, onnx_model
from hf2triton.backends.tokenizer import TokenizerSettings, load_tokenizer
from hf2triton.cpu import CpuMeter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InProcess:
    """An in-process measurement: texts/s, per-call latency, and the contention during it."""

    name: str
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    other_cpu_pct: float


@dataclass(frozen=True)
class CeilingModel:
    """What one in-process call needs: the tokenizer, the session and the served settings."""

    encoder: object  # tokenizers.Tokenizer
    session: object  # onnxruntime.InferenceSession
    settings: TokenizerSettings
    answer: fused.AnswerSettings

    def lengths(self, texts: Sequence[str]) -> list[int]:
        return [len(encoding.ids) for encoding in self.encoder.encode_batch(list(texts))]

    def __call__(self, texts: list[str]) -> np.ndarray:
        encodings = self.encoder.encode_batch(texts)
        width = max(len(encoding.ids) for encoding in encodings)
        ids = np.zeros((len(texts), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        (hidden,) = self.session.run([self.answer.model_output], {n: arrays[n] for n in self.settings.input_names})
        return fused.answer(hidden, mask, self.answer)[fused.EMBEDDING_OUTPUT]


# The benchmark's model is an embedder: mean-pooled, normalised last hidden state.
EMBEDDING_ANSWER = fused.AnswerSettings(task="embeddings", model_output="last_hidden_state")


def served_tokenizer(repository: Path, name: str):
    """(tokenizers.Tokenizer, TokenizerSettings) of ensemble ``name``'s tokenizer step, as served."""
    from hf2triton.repository import parse_pbtxt

    config = parse_pbtxt((repository / f"{name}_tokenizer" / "config.pbtxt").read_text())
    settings = TokenizerSettings.from_json(config.parameters["settings"].string_value)
    return load_tokenizer(repository / f"{name}_tokenizer" / "1" / "tokenizer.json", settings.max_length), settings


def ceiling_model(repository: Path, name: str, onnx_file: Path | None = None) -> CeilingModel:
    """The served tokenizer and ONNX file of ensemble ``name`` (or another ONNX file, e.g. a fused graph)."""
    encoder, settings = served_tokenizer(repository, name)
    served = onnx_file or repository / f"{name}_model" / "1" / "model.onnx"
    return CeilingModel(encoder, onnx_model.create_session(served), settings, EMBEDDING_ANSWER)


def batches_of(texts: Sequence[str], size: int, lengths: Sequence[int] | None = None) -> list[list[str]]:
    """Consecutive batches of ``size``; sorted by ``lengths`` first when given (shortest first)."""
    order = sorted(range(len(texts)), key=lambda i: lengths[i]) if lengths is not None else range(len(texts))
    ordered = [texts[i] for i in order]
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def timed_calls(call: Callable[[list[str]], object], batches: list[list[str]], seconds: float
                ) -> tuple[int, list[float], float]:
    """Call on the batches in turn (cycling) for ``seconds``: texts done, each call's seconds, elapsed."""
    done, durations, index = 0, [], 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or index % len(batches):  # whole passes: every length counts
        batch = batches[index % len(batches)]
        began = time.perf_counter()
        call(batch)
        durations.append(time.perf_counter() - began)
        done, index = done + len(batch), index + 1
    return done, durations, time.perf_counter() - start


T = TypeVar("T")


def quietest(label: str, measure: Callable[[], T], other_pct: Callable[[T], float], max_other: float,
             retries: int) -> T:
    """``measure()`` again (at most ``retries`` times) while other processes used over
    ``max_other`` % CPU meanwhile; the measurement with the least other CPU."""
    best = None
    for attempt in range(retries + 1):
        result = measure()
        if best is None or other_pct(result) < other_pct(best):
            best = result
        if not other_pct(result) > max_other or attempt == retries:
            break
        log.warning("%s: other processes used %.0f%% CPU, measuring again", label, other_pct(result))
    return best


def measure_in_process(name: str, call, batches: list[list[str]], seconds: float, max_other: float,
                       retries: int, meter: CpuMeter) -> InProcess:
    """Texts/s over whole passes of ``batches``; re-measured while other processes use over ``max_other`` %."""

    def measure() -> InProcess:
        call(batches[0])  # warm-up
        before = meter.sample()
        done, durations, elapsed = timed_calls(call, batches, seconds)
        usage = meter.usage(before, meter.sample())
        return InProcess(name, done / elapsed, 1000 * float(np.percentile(durations, 50)),
                         1000 * float(np.percentile(durations, 99)), usage.other_pct)

    return quietest(name, measure, lambda result: result.other_cpu_pct, max_other, retries)
