"""INT8 variants: explicit Q/DQ for TensorRT, dynamic quantization for ONNX Runtime on CPU.

TensorRT 10 deprecated and TensorRT 11 removed implicit INT8 calibration: precision
must live in the ONNX graph. The TensorRT file is ONNX Runtime static quantization in
QDQ format — symmetric int8 activations, symmetric per-channel int8 weights, on the
weight-bearing MatMul/Gemm nodes only — calibrated on user text.

The accuracy guard then measures it against fp32 on held-out text; while it misses
the threshold, the most sensitive nodes (largest local quantization error of their
output, measured on calibration activations) are left in fp32, fewest first.
On MiniLM that finds the FFN output projections, fed by GELU's long-tailed outputs.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from hf2triton.precision.accuracy import Accuracy, EvaluationSet, measure
from hf2triton.precision.calibration import TokenFeeds
from hf2triton.precision.options import CALIBRATION_METHODS
from hf2triton.export.checkpoint import Checkpoint
from hf2triton.errors import QuantizationError

log = logging.getLogger(__name__)

QUANTIZED_OP_TYPES = ("MatMul", "Gemm")


@dataclass(frozen=True)
class GuardStep:
    excluded: int  # nodes kept in fp32 at this step
    accuracy: Accuracy


@dataclass(frozen=True)
class QuantizedModel:
    path: Path
    quantized_nodes: tuple[str, ...]
    fp32_nodes: tuple[str, ...]  # weight-bearing nodes the guard left unquantized
    accuracy: Accuracy
    steps: tuple[GuardStep, ...] = field(default=())


def prepare(fp32_onnx: Path, destination: Path) -> Path:
    """Shape inference and graph cleanup ORT recommends before quantizing."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_onnx), str(destination), auto_merge=True)
    return destination


def weight_nodes(model: onnx.ModelProto) -> list[str]:
    """MatMul/Gemm nodes that multiply by a weight initializer (not activation × activation)."""
    initializers = {tensor.name for tensor in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in QUANTIZED_OP_TYPES and any(name in initializers for name in node.input)
    ]


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    if name not in CALIBRATION_METHODS:
        raise QuantizationError(f"unknown calibration method {name!r}; choose one of {CALIBRATION_METHODS}")
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def write_qdq(
    prepared: Path, destination: Path, ranges_cache: Path, nodes: list[str], method: str,
    feeds: TokenFeeds | None = None,
) -> Path:
    """Quantize ``nodes`` in QDQ format; the first call calibrates and fills ``ranges_cache``."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(prepared),
        str(destination),
        feeds.reader() if feeds is not None else None,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTIZED_OP_TYPES),
        nodes_to_quantize=nodes,
        per_channel=True,
        reduce_range=False,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=_method(method),
        calibration_cache_path=str(ranges_cache),
        # Q/DQ on MatMul inputs only, as TensorRT wants it: a quantized MatMul output would
        # put the residual stream (ranges of ±200 on MiniLM) through int8. A dedicated
        # pair per consumer keeps a tensor that also feeds unquantized nodes in fp32.
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                       "CalibTensorRangeSymmetric": True, "DedicatedQDQPair": True,
                       "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OP_TYPES)},
    )
    return destination


def _fake_quantize(values: np.ndarray, scale: np.ndarray | float) -> np.ndarray:
    scale = np.maximum(scale, 1e-12)
    return np.clip(np.round(values / scale), -127, 127) * scale


def local_errors(prepared: Path, ranges_cache: Path, nodes: list[str], sample: TokenFeeds) -> dict[str, float]:
    """Relative error each node's output takes when only its own input and weight are int8."""
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import load_tensors_data

    model = onnx.load(str(prepared))
    weights = {t.name: t for t in model.graph.initializer}
    by_name = {node.name: node for node in model.graph.node}
    activation_of = {n: next(i for i in by_name[n].input if i not in weights) for n in nodes}
    outputs = {o.name for o in model.graph.output}
    for tensor in sorted(set(activation_of.values()) - outputs):
        model.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.onnx"
        onnx.save(model, str(probe))
        session = ort.InferenceSession(str(probe), providers=["CPUExecutionProvider"])
        wanted = sorted(set(activation_of.values()))
        collected: dict[str, list[np.ndarray]] = {t: [] for t in wanted}
        for feed in sample.feeds:
            for tensor, value in zip(wanted, session.run(wanted, feed)):
                collected[tensor].append(value.reshape(-1, value.shape[-1]))
    ranges = load_tensors_data(ranges_cache).data
    errors = {}
    for node in nodes:
        x = np.concatenate(collected[activation_of[node]])
        weight = numpy_helper.to_array(weights[next(i for i in by_name[node].input if i in weights)])
        if any(a.name == "transB" and a.i for a in by_name[node].attribute):  # Gemm stores W as [N, K]
            weight = weight.T
        bound = ranges[activation_of[node]].range_value
        x_scale = max(abs(float(np.asarray(bound[0]).max())), abs(float(np.asarray(bound[1]).max()))) / 127
        w_scale = np.abs(weight).max(axis=0, keepdims=True) / 127
        exact = x @ weight
        approx = _fake_quantize(x, x_scale) @ _fake_quantize(weight, w_scale)
        errors[node] = float(np.linalg.norm(approx - exact) / max(np.linalg.norm(exact), 1e-12))
    return errors


def exclusion_search(passes, limit: int) -> int | None:
    """The fewest ranked nodes to leave in fp32 so that ``passes(k)``: try 0, 1, 2, 4, …
    then bisect between the last failure and the first pass (accuracy grows with k)."""
    if passes(0):
        return 0
    failed, k = 0, 1
    while not passes(k):
        if k >= limit:
            return None
        failed, k = k, min(2 * k, limit)
    passed = k
    while passed - failed > 1:
        middle = (failed + passed) // 2
        failed, passed = (failed, middle) if passes(middle) else (middle, passed)
    return passed


def guarded_qdq(
    fp32_onnx: Path, destination: Path, checkpoint: Checkpoint, calibration: TokenFeeds,
    evaluation: EvaluationSet, method: str = "minmax", min_cosine: float = 0.99,
    min_agreement: float = 0.99, max_fp32_nodes: int | None = None,
) -> QuantizedModel:
    """The TensorRT INT8 file: quantize, then keep the most sensitive nodes in fp32 until it passes.

    Nodes are ranked once by local quantization error; the search then finds the
    fewest top-ranked nodes to keep in fp32, measuring the whole model each time.
    """
    with tempfile.TemporaryDirectory(prefix="hf2triton-int8-") as tmp:
        work = Path(tmp)
        prepared = prepare(fp32_onnx, work / "prepared.onnx")
        nodes = weight_nodes(onnx.load(str(prepared), load_external_data=False))
        if not nodes:
            raise QuantizationError(f"{fp32_onnx} has no weight-bearing MatMul/Gemm to quantize")
        cache = work / "ranges.json"
        started = time.perf_counter()
        write_qdq(prepared, work / "all.onnx", cache, nodes, method, calibration)
        log.info("calibrated %d nodes (%s) in %.1f s", len(nodes), method, time.perf_counter() - started)
        errors = local_errors(prepared, cache, nodes, TokenFeeds(calibration.feeds[:32]))
        ranked = sorted(nodes, key=errors.get, reverse=True)
        limit = len(nodes) - 1 if max_fp32_nodes is None else min(max_fp32_nodes, len(nodes) - 1)
        steps: dict[int, GuardStep] = {}

        def passes(excluded: int) -> bool:
            candidate = work / f"int8-{excluded}.onnx"
            write_qdq(prepared, candidate, cache, ranked[excluded:], method)
            accuracy = measure(candidate, evaluation, checkpoint, min_cosine, min_agreement)
            steps[excluded] = GuardStep(excluded, accuracy)
            log.info("int8 with %d/%d nodes in fp32: %s", excluded, len(nodes), accuracy.summary())
            return accuracy.passed

        found = exclusion_search(passes, limit)
        history = tuple(steps[k] for k in sorted(steps))
        if found is not None:
            shutil.copyfile(work / f"int8-{found}.onnx", destination)
            kept = tuple(n for n in nodes if n not in ranked[:found])
            return QuantizedModel(destination, kept, tuple(ranked[:found]), steps[found].accuracy, history)
    figures = "; ".join(f"{s.excluded} in fp32: {s.accuracy.value:.4f}" for s in history)
    raise QuantizationError(
        f"no INT8 QDQ variant met {history[-1].accuracy.metric} ≥ {history[-1].accuracy.threshold} "
        f"even with {limit} of {len(nodes)} nodes left in fp32 ({figures}); lower --min-agreement, "
        "bring calibration text closer to your traffic (--calibration-data), or serve fp16"
    )


def dynamic_int8(fp32_onnx: Path, destination: Path, fused: bool = False, heads: int = 0, hidden: int = 0) -> Path:
    """ONNX Runtime dynamic quantization (int8 per-channel weights, activations at run time).

    CPU only: TensorRT cannot read the result. ``fused`` first applies ONNX Runtime's
    offline BERT fusions (Attention, EmbedLayerNormalization, ...) to the plain graph.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="hf2triton-dyn-") as tmp:
        source = fp32_onnx
        extra = {}
        if fused:
            source = fuse_for_cpu(fp32_onnx, Path(tmp) / "fused.onnx", heads, hidden)
            extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        else:
            source = prepare(fp32_onnx, Path(tmp) / "prepared.onnx")
        quantize_dynamic(str(source), str(destination), per_channel=True, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Attention", "Gemm"], extra_options=extra)
    return destination


def fuse_for_cpu(fp32_onnx: Path, destination: Path, heads: int = 0, hidden: int = 0) -> Path:
    """ORT's transformer optimizer: fused contrib ops, CPU/ORT only (TensorRT cannot parse them).

    Head count and hidden size come from the checkpoint: the optimizer's own detection
    fails on these graphs and then silently skips the Attention fusion.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(fp32_onnx), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=1)
    optimized.save_model_to_file(str(destination))
    return destination
