"""FP16 variant: weights and activations in half precision, fp32 inputs and outputs kept.

Which operators stay in fp32 is decided by measurement: convert everything, check the
accuracy guard, and while it fails, block the operator type whose fp32 fallback helps
most (LayerNorm/Softmax reductions and wide-range adds are the usual suspects).
On ONNX Runtime CPU the fp16 graph runs through inserted Casts — exact but no faster;
fp16 is for GPUs (TensorRT, ORT CUDA).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from hf2triton.precision.accuracy import Accuracy, EvaluationSet, measure
from hf2triton.export.checkpoint import Checkpoint
from hf2triton.errors import ExportError

log = logging.getLogger(__name__)

# Operator types tried as fp32 islands, in no particular order: measurement ranks them.
FRAGILE_OP_TYPES = ("LayerNormalization", "Softmax", "ReduceMean", "Pow", "Sqrt", "Div", "Erf", "Add", "Exp")


@dataclass(frozen=True)
class HalfModel:
    path: Path
    fp32_op_types: tuple[str, ...]
    accuracy: Accuracy


def convert(fp32_onnx: Path, destination: Path, fp32_op_types: tuple[str, ...] = ()) -> Path:
    from onnxconverter_common import float16

    model = onnx.load(str(fp32_onnx))
    half = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(fp32_op_types) or None, disable_shape_infer=False
    )
    onnx.save(half, str(destination))
    return destination


def guarded_fp16(
    fp32_onnx: Path, destination: Path, checkpoint: Checkpoint, evaluation: EvaluationSet,
    min_cosine: float = 0.999, min_agreement: float = 0.99,
) -> HalfModel:
    """Convert; while the guard fails, keep the most helpful operator type in fp32."""
    blocked: tuple[str, ...] = ()
    present = {node.op_type for node in onnx.load(str(fp32_onnx), load_external_data=False).graph.node}
    candidates = [op for op in FRAGILE_OP_TYPES if op in present]
    accuracy = measure(convert(fp32_onnx, destination), evaluation, checkpoint, min_cosine, min_agreement)
    log.info("fp16, nothing kept in fp32: %s", accuracy.summary())
    with tempfile.TemporaryDirectory(prefix="hf2triton-fp16-") as tmp:
        while not accuracy.passed and candidates:
            trials = {}
            for op in list(candidates):
                trial = convert(fp32_onnx, Path(tmp) / f"{op}.onnx", (*blocked, op))
                try:
                    trials[op] = measure(trial, evaluation, checkpoint, min_cosine, min_agreement)
                except Exception as exc:  # the converter can emit graphs ORT rejects for some blocks
                    log.info("fp16 with %s in fp32 is not a valid graph (%s); skipped", op, str(exc)[:120])
                    candidates.remove(op)
            if not trials:
                break
            best = max(trials, key=lambda op: trials[op].value)
            blocked, accuracy = (*blocked, best), trials[best]
            candidates.remove(best)
            convert(fp32_onnx, destination, blocked)
            log.info("fp16 with %s in fp32: %s", ", ".join(blocked), accuracy.summary())
    if not accuracy.passed:
        raise ExportError(f"the fp16 variant misses the accuracy threshold even with "
                          f"{', '.join(blocked)} in fp32: {accuracy.summary()}")
    return HalfModel(destination, blocked, accuracy)
