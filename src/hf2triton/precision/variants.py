"""Precision variants of the exported model, each proven against fp32, measured, compared.

``build_variants`` turns the fp32 ONNX file into the variants asked for:

- ``fp16``: half precision with fp32 I/O (for GPUs; exact but not faster on ORT CPU);
- ``int8_qdq``: explicit Q/DQ, symmetric, per-channel — the file TensorRT builds INT8
  engines from; runs in ONNX Runtime too (that is how the guard checks it);
- ``int8_dynamic`` / ``int8_dynamic_fused``: ONNX Runtime dynamic quantization, on the
  plain graph or on ORT's fused transformer graph — CPU only.

Every variant's accuracy is measured against fp32 on held-out text, its throughput in
one interleaved run beside fp32 (ratios, since these machines are noisy), and the
fastest that passes can be selected to serve.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hf2triton.precision.accuracy import Accuracy, evaluation_set, measure
from hf2triton.backends.onnx_model import create_session
from hf2triton.backends.tokenizer import TokenizerSettings
from hf2triton.precision.calibration import packaged_texts, packed_feeds, read_texts, unpadded_feeds
from hf2triton.export.checkpoint import Checkpoint
from hf2triton.errors import ExportError
from hf2triton.cpu import CpuMeter
from hf2triton.precision.fp16 import guarded_fp16
from hf2triton.precision.options import PRECISIONS, VariantOptions  # noqa: F401 (re-exported)
from hf2triton.precision.quantize import dynamic_int8, guarded_qdq

log = logging.getLogger(__name__)

# Where each variant runs: the CPU server can serve those marked cpu.
TARGETS = {
    "fp32": "cpu, gpu, tensorrt",
    "fp16": "gpu, tensorrt (on ORT CPU: exact but no faster)",
    "int8_qdq": "tensorrt (INT8 engines); ORT CPU runs it, slower than dynamic int8",
    "int8_dynamic": "cpu (ONNX Runtime only)",
    "int8_dynamic_fused": "cpu (ONNX Runtime only; fused contrib ops)",
}
CPU_SERVABLE = ("fp32", "fp16", "int8_qdq", "int8_dynamic", "int8_dynamic_fused")
# A variant must beat the next-higher precision by this much to be worth selecting.
WORTH_IT = 1.10


@dataclass(frozen=True)
class Variant:
    name: str
    path: Path
    accuracy: Accuracy | None  # None for fp32, the reference
    size_bytes: int
    fp32_nodes: tuple[str, ...] = ()  # int8_qdq: nodes the guard left unquantized
    fp32_op_types: tuple[str, ...] = ()  # fp16: operator types kept in fp32
    guard_steps: tuple[tuple[int, float], ...] = ()  # (nodes in fp32, metric value)

    def report(self) -> dict:
        return {
            "file": self.path.name,
            "runs_on": TARGETS[self.name],
            "size_mb": round(self.size_bytes / 1e6, 2),
            "accuracy": asdict(self.accuracy) | {"passed": self.accuracy.passed} if self.accuracy else "reference",
            "fp32_nodes": list(self.fp32_nodes),
            "fp32_op_types": list(self.fp32_op_types),
            "guard_steps": [{"nodes_in_fp32": k, "metric": v} for k, v in self.guard_steps],
        }


def calibration_texts(options: VariantOptions) -> list[str]:
    if options.calibration_data is None:
        return packaged_texts("calibration")
    return read_texts(options.calibration_data, options.calibration_column)


def build_variants(
    fp32_onnx: Path, work: Path, checkpoint: Checkpoint, tokenizer, settings: TokenizerSettings,
    options: VariantOptions,
) -> tuple[list[Variant], dict[str, str]]:
    """fp32 first, then each requested lower precision, each guarded against fp32.

    A variant the guard rejects is not served: it is returned in the second value
    (name → why) for the report, and the export goes on with the others.
    """
    variants = [Variant("fp32", fp32_onnx, None, fp32_onnx.stat().st_size)]
    rejected: dict[str, str] = {}
    if options.precisions == ("fp32",):
        return variants, rejected
    evaluation = evaluation_set(fp32_onnx, checkpoint, tokenizer, settings, packaged_texts("heldout"))
    if "fp16" in options.precisions:
        try:
            half = guarded_fp16(fp32_onnx, work / "model.fp16.onnx", checkpoint, evaluation,
                                min_agreement=options.min_agreement)
            variants.append(Variant("fp16", half.path, half.accuracy, half.path.stat().st_size,
                                    fp32_op_types=half.fp32_op_types))
        except ExportError as exc:
            rejected["fp16"] = str(exc)
    if "int8" in options.precisions:
        texts = calibration_texts(options)
        feeds = (unpadded_feeds(tokenizer, texts, settings) if options.calibration_method == "minmax"
                 else packed_feeds(tokenizer, texts, settings))
        try:
            qdq = guarded_qdq(fp32_onnx, work / "model.int8_qdq.onnx", checkpoint, feeds, evaluation,
                              method=options.calibration_method, min_cosine=options.min_cosine,
                              min_agreement=options.min_agreement)
            variants.append(Variant("int8_qdq", qdq.path, qdq.accuracy, qdq.path.stat().st_size,
                                    fp32_nodes=qdq.fp32_nodes,
                                    guard_steps=tuple((s.excluded, s.accuracy.value) for s in qdq.steps)))
        except ExportError as exc:
            rejected["int8_qdq"] = str(exc)
        for fused in (False, True):
            name = "int8_dynamic_fused" if fused else "int8_dynamic"
            path = dynamic_int8(fp32_onnx, work / f"model.{name}.onnx", fused=fused,
                                heads=checkpoint.attention_heads, hidden=checkpoint.hidden_size)
            accuracy = measure(path, evaluation, checkpoint, options.min_cosine, options.min_agreement)
            if accuracy.passed:
                variants.append(Variant(name, path, accuracy, path.stat().st_size))
            else:
                rejected[name] = f"misses the accuracy guard: {accuracy.summary()}"
    for variant in variants[1:]:
        log.info("%s: %s", variant.name, variant.accuracy.summary())
    for name, why in rejected.items():
        log.warning("%s is not served: %s", name, why)
    return variants, rejected


# ------------------------------------------------------------------ throughput, side by side

BENCH_BATCHES = (1, 8, 32)
BENCH_LENGTHS = (16, 64, 128)


def synthetic_batch(settings: TokenizerSettings, batch: int, length: int) -> dict[str, np.ndarray]:
    """Token ids of real vocabulary range, no padding: a [batch, length] cell of the grid."""
    rng = np.random.default_rng(batch * 1000 + length)
    length = min(length, settings.max_length)
    arrays = {
        "input_ids": rng.integers(1000, 2000, size=(batch, length), dtype=np.int64),
        "attention_mask": np.ones((batch, length), dtype=np.int64),
        "token_type_ids": np.zeros((batch, length), dtype=np.int64),
    }
    return {name: arrays[name] for name in settings.input_names}


@dataclass(frozen=True)
class GridCell:
    batch: int
    length: int
    ms: dict[str, float]  # variant -> median latency of one batch
    other_cpu: float  # share (0..1) of all cores other processes used meanwhile


def benchmark_grid(variants: list[Variant], settings: TokenizerSettings, rounds: int = 5) -> list[GridCell]:
    """Median batch latency per variant and grid cell, variants interleaved round by round."""
    meter = CpuMeter()
    sessions = {v.name: create_session(v.path) for v in variants}
    cells = []
    for batch in BENCH_BATCHES:
        for length in BENCH_LENGTHS:
            feed = synthetic_batch(settings, batch, length)
            for session in sessions.values():
                session.run(None, feed)  # warm-up
            times: dict[str, list[float]] = {name: [] for name in sessions}
            before = meter.sample()
            for _ in range(rounds):
                for name, session in sessions.items():
                    started = time.perf_counter()
                    session.run(None, feed)
                    times[name].append(time.perf_counter() - started)
            other = meter.usage(before, meter.sample()).other_pct / 100
            cells.append(GridCell(batch, min(length, settings.max_length),
                                  {n: 1000 * statistics.median(t) for n, t in times.items()}, round(other, 3)))
    return cells


def throughput_ratio(cells: list[GridCell], name: str, baseline: str = "fp32", batch: int = 32) -> float:
    """Geometric mean over sequence lengths of baseline time / variant time at ``batch``."""
    ratios = [c.ms[baseline] / c.ms[name] for c in cells if c.batch == batch]
    return float(np.exp(np.mean(np.log(ratios))))


def select_variant(variants: list[Variant], cells: list[GridCell]) -> tuple[Variant, list[str]]:
    """The fastest CPU-servable variant that passes the guard and is worth it; notes say why not others."""
    notes, chosen = [], variants[0]
    for variant in variants[1:]:
        if variant.name not in CPU_SERVABLE or not variant.accuracy.passed:
            notes.append(f"{variant.name}: not eligible (accuracy {variant.accuracy.summary()})")
            continue
        speedup = throughput_ratio(cells, variant.name, chosen.name)
        if speedup < WORTH_IT:
            notes.append(f"{variant.name}: not worth it, {speedup:.2f}× {chosen.name} at batch 32")
            continue
        notes.append(f"{variant.name}: {speedup:.2f}× {chosen.name} at batch 32")
        chosen = variant
    return chosen, notes
