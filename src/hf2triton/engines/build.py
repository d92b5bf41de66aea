"""TensorRT engines from the FP16 and INT8 QDQ ONNX files.

Precision lives in the ONNX graph (TensorRT 10 deprecated, TensorRT 11 removed the
FP16/INT8 builder flags and implicit calibration): networks are built strongly typed
where the TensorRT version has that mode; only TensorRT < 10 gets the precision flags.

Engines are tied to the exact TensorRT version and GPU: each plan gets a
:class:`~hf2triton.engines.record.PlanRecord` (``<plan>.json``) recording both and the pinned
Triton release, which ``hf2triton check`` compares with the server.
Without TensorRT or a GPU, building stops with a message saying how to build in the
``builder`` container (same TensorRT release as the Triton image).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from hf2triton.engines.environment import GpuInfo, detect_gpu, import_tensorrt, pinned_release
from hf2triton.engines.record import PlanRecord
from hf2triton.errors import ExportError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSpec:
    onnx_file: Path
    plan_file: Path
    precision: str  # "fp16" or "int8": what the ONNX graph carries
    input_names: tuple[str, ...]
    max_batch_size: int
    buckets: tuple[int, ...]  # sequence-length buckets the tokenizer pads to
    per_bucket_profiles: bool = False  # one optimisation profile per bucket
    workspace_bytes: int = 4 << 30
    timing_cache: Path | None = None  # reused between builds


def shape_profiles(spec: EngineSpec) -> list[dict[str, tuple[tuple[int, int], ...]]]:
    """(min, opt, max) shapes per input: one profile over all lengths, or one per bucket."""
    batch_opt = max(1, spec.max_batch_size // 2)
    if spec.per_bucket_profiles:
        ranges = [(low + 1, high, high) for low, high in zip((0, *spec.buckets[:-1]), spec.buckets)]
    else:
        ranges = [(1, spec.buckets[len(spec.buckets) // 2], spec.buckets[-1])]
    return [
        {name: ((1, low), (batch_opt, opt), (spec.max_batch_size, high)) for name in spec.input_names}
        for low, opt, high in ranges
    ]


def network_flags(trt: ModuleType) -> tuple[int, bool]:
    """Creation flags, and whether precision must come from builder flags (TensorRT < 10)."""
    major = int(trt.__version__.split(".")[0])
    if major >= 11:
        return 0, False  # strongly typed is the only mode
    creation = trt.NetworkDefinitionCreationFlag
    if major >= 10 and hasattr(creation, "STRONGLY_TYPED"):
        return 1 << int(creation.STRONGLY_TYPED), False
    return 1 << int(creation.EXPLICIT_BATCH), True


def build_engine(
    spec: EngineSpec, trt: ModuleType | None = None, gpu: GpuInfo | None = None, release: str | None = None
) -> PlanRecord:
    """Parse, configure and build one plan; write it and its record. Raises ExportError on failure.

    ``release`` is the Triton release the plan is meant for (default: the pinned one,
    :func:`~hf2triton.engines.environment.pinned_release`); ``hf2triton check`` refuses the
    plan under another release.
    """
    trt = trt or import_tensorrt()
    gpu = gpu or detect_gpu()
    release = release or pinned_release()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags, precision_flags = network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(spec.onnx_file)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {spec.onnx_file}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
    if precision_flags:
        config.set_flag(trt.BuilderFlag.FP16)
        if spec.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
    profiles = shape_profiles(spec)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in shapes.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
    cached = spec.timing_cache.read_bytes() if spec.timing_cache and spec.timing_cache.exists() else b""
    cache = config.create_timing_cache(cached)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT failed to build an engine from {spec.onnx_file} (see the log above)")
    spec.plan_file.parent.mkdir(parents=True, exist_ok=True)
    spec.plan_file.write_bytes(bytes(serialized))
    if spec.timing_cache:
        spec.timing_cache.parent.mkdir(parents=True, exist_ok=True)
        spec.timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    record = PlanRecord(
        plan_file=spec.plan_file.name,
        tensorrt_version=str(trt.__version__),
        compute_capability=gpu.compute_capability,
        gpu_name=gpu.name,
        precision=spec.precision,
        triton_release=release,
        profiles=tuple({n: [list(s) for s in shape] for n, shape in p.items()} for p in profiles),
    )
    record.write(spec.plan_file)
    log.info("built %s (%s, TensorRT %s, sm %s, release %s)", spec.plan_file, spec.precision, trt.__version__,
             gpu.compute_capability, release or "not pinned")
    return record


def compare_with_onnxruntime(spec: EngineSpec, feeds: list[dict], atol: float = 1e-2) -> bool:
    """Polygraphy runs the plan and the ONNX file on the same feeds and compares outputs."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, CompareFunc

    runners = [
        TrtRunner(EngineFromBytes(BytesFromPath(str(spec.plan_file)))),
        OnnxrtRunner(SessionFromOnnx(str(spec.onnx_file))),
    ]
    results = Comparator.run(runners, data_loader=feeds)
    return bool(Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol)))


def check_engine_prerequisites() -> tuple[ModuleType, GpuInfo]:
    """Fail before any work when engines cannot be built here."""
    return import_tensorrt(), detect_gpu()
