"""``export_checkpoint``: checkpoint → ONNX → parity check → Triton repository.

This is the API; ``hf2triton export`` and ``build/export.py`` are thin shells over it.
"""

from __future__ import annotations

import logging
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from hf2triton.backends.postprocess import AGGREGATIONS, EntitySettings
from hf2triton.backends.tokenizer import TokenizerSettings
from hf2triton.contract import DEFAULT_MODEL_NAME, DEFAULT_REPOSITORY
from hf2triton.export.checkpoint import Checkpoint, default_checkpoint, inspect_checkpoint
from hf2triton.errors import OptionsError
from hf2triton.export.onnx_export import DEFAULT_OPSET, export_onnx, load_torch_model
from hf2triton.export.packing import packed_graph
from hf2triton.export.peft import is_adapter, merge_adapter
from hf2triton.export.parity import ParityReport, check_parity, require_parity
from hf2triton.repository import RepositoryLayout, RepositorySpec, ServingOptions, recover_repository, write_repository
from hf2triton.export.tokenization import (
    DEFAULT_MAX_WINDOWS,
    entity_settings,
    served_tokenizer,
    text_options,
    tokenizer_settings,
    write_tokenizer_json,
)
from hf2triton.precision.variants import GridCell, Variant, VariantOptions, benchmark_grid, build_variants, select_variant

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
DEFAULT_MAX_TEXT_BYTES = 64 * 1024


@dataclass(frozen=True)
class ExportOptions:
    checkpoint: Path | None = None  # None: the embedded default model
    output_dir: Path = Path(DEFAULT_REPOSITORY)
    name: str | None = None  # default: from the checkpoint folder's name
    task: str | None = None  # default: detected from config.json
    max_length: int | None = None  # default: the model's own limit
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    opset: int = DEFAULT_OPSET
    atol: float = 1e-4
    aggregation: str = "simple"  # token classification: how token labels become entities
    overwrite: bool = False
    version: int | None = None  # None: a new model gets 1, another checkpoint the next version
    allow_parity_failure: bool = False
    serving: ServingOptions = field(default_factory=ServingOptions)
    variants: VariantOptions = field(default_factory=VariantOptions)
    engines: bool = False  # build TensorRT plans from the fp16 / int8 QDQ files (GPU + TensorRT)
    # Long texts: token classification in windows sharing ``stride`` tokens; embeddings "truncate" or "chunk"
    stride: int | None = None
    long_text: str = "truncate"
    max_windows: int = DEFAULT_MAX_WINDOWS  # windows per text at most (the rest is cut, reported)

    def __post_init__(self):
        if self.name is not None and not NAME_PATTERN.match(self.name):
            raise OptionsError(
                f"model name {self.name!r} is invalid: use letters, digits, '_' and '-' (at most 64)"
            )
        if self.engines and not {"fp16", "int8"} & set(self.variants.precisions):
            raise OptionsError("--engines needs --precision fp16 and/or int8: precision lives in the ONNX graph")
        if self.serving.backend == "tensorrt" and not self.engines:
            raise OptionsError("--backend tensorrt serves TensorRT plans: add --engines (on a GPU machine)")
        if self.aggregation not in AGGREGATIONS:
            raise OptionsError(f"--aggregation {self.aggregation!r}: choose one of {', '.join(AGGREGATIONS)}")
        if self.version is not None and self.version < 1:
            raise OptionsError(f"--version must be 1 or more, got {self.version}")
        if self.max_text_bytes < 1:
            raise OptionsError(f"--max-text-bytes must be positive, got {self.max_text_bytes}")


@dataclass(frozen=True)
class ExportResult:
    layout: RepositoryLayout
    checkpoint: Checkpoint
    parity: ParityReport
    seconds: dict[str, float]
    variants: tuple[Variant, ...] = ()
    rejected: tuple[tuple[str, str], ...] = ()  # variants the accuracy guard refused, and why
    served: str = "fp32"
    grid: tuple[GridCell, ...] = ()
    notes: tuple[str, ...] = ()
    settings: TokenizerSettings | None = None  # what the tokenizer step (or fused model) was given
    entities: EntitySettings | None = None  # token classification: the postprocess step's entity settings

    @property
    def tokenizer_json(self) -> Path:
        """The served tokenizer.json, in the repository (step paths live in the layout)."""
        return self.layout.tokenizer_file


def model_name(options: ExportOptions, checkpoint_path: Path, is_default: bool) -> str:
    if options.name:
        return options.name
    if is_default:
        return DEFAULT_MODEL_NAME
    return re.sub(r"[^a-z0-9_]+", "_", checkpoint_path.name.lower()).strip("_")[:64] or "model"


def versions() -> dict[str, str]:
    found = {}
    for package in ("hf2triton", "torch", "transformers", "tokenizers", "onnx", "onnxruntime", "nvidia-pytriton"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def build_manifest(name: str, checkpoint: Checkpoint, options: ExportOptions, settings, source: Path) -> dict:
    """What was built, from what, with which versions and command: enough to reproduce it."""
    return {
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "checkpoint": {
            "path": str(source.resolve()),
            "peft_adapter_merged": is_adapter(source),
            "fingerprint": checkpoint.fingerprint,
            "model_type": checkpoint.model_type,
            "architectures": list(checkpoint.architectures),
        },
        "task": checkpoint.task.name,
        "inputs": list(checkpoint.input_names),
        "max_sequence_length": settings.max_length,
        "buckets": list(settings.buckets),
        "labels": list(checkpoint.labels),
        "multi_label": checkpoint.multi_label,
        "pooling": asdict(checkpoint.pooling),
        "aggregation": options.aggregation if checkpoint.task.token_alignment else None,
        "long_text": {"stride": options.stride, "mode": options.long_text, "max_windows": options.max_windows},
        "opset": options.opset,
        "serving": {**asdict(options.serving), "version_policy": str(options.serving.version_policy)},
        "versions": versions(),
    }


def export_checkpoint(options: ExportOptions) -> ExportResult:
    """Export, check and write; raises an ``Hf2TritonError`` subclass with a clear message."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    if options.engines:  # fail before any work when engines cannot be built here
        from hf2triton.engines.build import check_engine_prerequisites

        check_engine_prerequisites()
    recover_repository(options.output_dir)  # an interrupted export must not stay half-installed meanwhile
    is_default = options.checkpoint is None
    path = default_checkpoint() if is_default else Path(options.checkpoint)
    with tempfile.TemporaryDirectory(prefix="hf2triton-export-") as tmp:
        work = Path(tmp)
        source = merge_adapter(path, work / "merged") if is_adapter(path) else path
        checkpoint = inspect_checkpoint(source, task=options.task, max_length=options.max_length)
        name = model_name(options, path.resolve(), is_default)
        log.info("exporting %s (%s, %s) as %s", path, checkpoint.model_type, checkpoint.task.name, name)
        tokenizer_json = write_tokenizer_json(checkpoint, work / "tokenizer.json")
        settings = tokenizer_settings(tokenizer_json, checkpoint, options.max_text_bytes)
        entities = entity_settings(tokenizer_json, checkpoint, options.aggregation)
        text = text_options(tokenizer_json, checkpoint, stride=options.stride, long_text=options.long_text,
                            max_windows=options.max_windows, aggregation=options.aggregation)
        if text.windowed and options.serving.layout == "fused":
            raise OptionsError("long-text windows (--stride, --long-text chunk) need the ensemble layout")
        tokenizer = served_tokenizer(tokenizer_json, settings)
        model = load_torch_model(checkpoint)
        seconds["load"] = time.perf_counter() - start
        mark = time.perf_counter()
        onnx_file = export_onnx(model, checkpoint, work / "model.onnx", opset=options.opset)
        seconds["export"] = time.perf_counter() - mark
        mark = time.perf_counter()
        report = check_parity(
            model, onnx_file, checkpoint, tokenizer, settings, atol=options.atol
        )
        seconds["parity"] = time.perf_counter() - mark
        require_parity(report, options.allow_parity_failure)
        mark = time.perf_counter()
        variants, rejected = build_variants(onnx_file, work, checkpoint, tokenizer, settings, options.variants)
        seconds["variants"] = time.perf_counter() - mark
        grid, notes, served = measure_and_select(variants, settings, options.variants)
        plans = build_engines(variants, work, checkpoint, settings, options) if options.engines else {}
        extra = {v.name: v.path for v in variants if v.name != served.name}
        reports = {
            "parity": asdict(report),
            "report": variant_report(variants, rejected, served, grid, notes, plans),
        }
        spec = RepositorySpec(
            root=options.output_dir,
            name=name,
            checkpoint=checkpoint,
            onnx_file=served.path,
            tokenizer_json=tokenizer_json,
            settings=settings,
            serving=options.serving,
            manifest=build_manifest(name, checkpoint, options, settings, path),
            reports=reports,
            overwrite=options.overwrite,
            version=options.version,
            variants=extra,
            plans=plans,
            entities=entities,
            text=text,
        )
        mark = time.perf_counter()
        packed = packed_served_graph(model, checkpoint, served, work, tokenizer, settings, options)
        seconds["packed"] = time.perf_counter() - mark
        mark = time.perf_counter()
        layout = write_repository(replace(spec, packed_onnx_file=packed))
        seconds["write"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - start
    return ExportResult(layout, checkpoint, report, seconds, tuple(variants), tuple(rejected.items()), served.name,
                        tuple(grid), tuple(notes), settings, entities)


def packed_served_graph(model, checkpoint: Checkpoint, served: Variant, work: Path, tokenizer,
                        settings: TokenizerSettings, options: ExportOptions) -> Path | None:
    """The packed graph of the served fp32 model, for the fused model or the python-ort model
    step (``--pack-tokens`` > 0).

    Not for int8_dynamic: its packed graph (quantized the same way, min cosine vs fp32 on
    packed rows 0.965, as padded) served no faster — 438-462 against 444-456 texts/s at c16,
    555-582 against 577-601 at c64 (``perf/cpu_breakdown.py``, two rounds): with cheaper
    matrix products, the longer rows' attention eats what packing saves.
    """
    serving = options.serving
    if serving.pack_tokens == 0 or serving.backend != "python-ort":
        return None
    if served.name != "fp32":
        log.info("no packed graph for the %s variant: its padded graph serves", served.name)
        return None
    return packed_graph(model, checkpoint, served.path, work / "model.packed.onnx", tokenizer, settings,
                        atol=options.atol, opset=options.opset)


def measure_and_select(
    variants: list[Variant], settings, options: VariantOptions
) -> tuple[list[GridCell], list[str], Variant]:
    """Side-by-side latency grid; with ``select``, the fastest variant that passes and is worth it."""
    if len(variants) == 1 or not options.benchmark:
        return [], [], variants[0]
    grid = benchmark_grid(variants, settings)
    if not options.select:
        return grid, [], variants[0]
    chosen, notes = select_variant(variants, grid)
    log.info("selected %s to serve: %s", chosen.name, "; ".join(notes))
    return grid, notes, chosen


def build_engines(variants: list[Variant], work: Path, checkpoint: Checkpoint, settings, options: ExportOptions):
    """TensorRT plans from the most compact variant the engine can take (int8 QDQ, else fp16)."""
    from hf2triton.engines.build import EngineSpec, build_engine, check_engine_prerequisites

    trt, gpu = check_engine_prerequisites()
    by_name = {v.name: v for v in variants}
    source = by_name.get("int8_qdq") or by_name.get("fp16")
    if source is None:
        raise OptionsError("--engines needs --precision fp16 and/or int8: precision lives in the ONNX graph")
    spec = EngineSpec(
        onnx_file=source.path,
        plan_file=work / "engines" / "model.plan",
        precision="int8" if source.name == "int8_qdq" else "fp16",
        input_names=checkpoint.input_names,
        max_batch_size=options.serving.max_batch_size,
        buckets=settings.buckets,
        timing_cache=options.output_dir / ".tensorrt-timing.cache",
    )
    info = build_engine(spec, trt, gpu)
    return {info.compute_capability: spec.plan_file}


def variant_report(
    variants: list[Variant], rejected: dict[str, str], served: Variant, grid: list[GridCell], notes: list[str], plans
) -> dict:
    return {
        "served": served.name,
        "selection": notes,
        "variants": {v.name: v.report() for v in variants},
        "rejected": rejected,
        "latency_ms": [asdict(cell) for cell in grid],
        "engines": {cc: str(path.name) for cc, path in plans.items()},
    }
