"""Write the Triton model repository: ensemble ``NAME`` = tokenizer → model → postprocess,
or (``layout="fused"``) one python-backend model ``NAME`` doing all three.

Both layouts keep the client contract of :mod:`hf2triton.contract`: ``TEXT`` in, the
task outputs and ``TRUNCATED`` out, and the contract parameters on ``NAME``'s config.

The repository is self-contained and relocatable: step code (``model.py``), the ONNX
file, tokenizer.json, labels and settings are copied in; nothing points back to the
checkpoint. It is staged outside the repository folder and moved into place at the
end, so a running tritonserver never sees half a model, and a failed export leaves
the previous repository as it was.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path

from hf2triton import contract
from hf2triton.backends.fused import STEP_MODULES as FUSED_STEP_MODULES
from hf2triton.backends.fused import AnswerSettings
from hf2triton.backends.postprocess import EntitySettings
from hf2triton.backends.tokenizer import TokenizerSettings
from hf2triton.checkpoint import Checkpoint
from hf2triton.errors import RepositoryError
from hf2triton.tasks import HIDDEN
from hf2triton.triton_config import (
    Batching,
    Ensemble,
    EnsembleStep,
    PlatformModel,
    PythonModel,
    Tensor,
    build_ensemble,
    build_platform_model,
    build_python_model,
    to_pbtxt,
)

log = logging.getLogger(__name__)

BACKENDS = ("python-ort", "onnxruntime", "tensorrt")
MANIFEST = "hf2triton.json"  # in the ensemble's folder: what built it, from which checkpoint
VERSION = "1"
LAYOUTS = ("ensemble", "fused")
DEFAULT_LAYOUT = "ensemble"


@dataclass(frozen=True)
class ServingOptions:
    """How the served steps batch and how many instances run; defaults measured (README, Performance).

    Two model instances sharing the cores (``intra_op_threads=0``: cores // instances
    threads each, decided where the model is served) beat one instance using every core;
    no queue delay: at concurrency 1 it is pure latency, under load requests queue anyway.
    """

    max_batch_size: int = 32
    tokenizer_instances: int = 1
    model_instances: int = 2
    postprocess_instances: int = 1
    model_queue_delay_us: int = 0
    intra_op_threads: int = 0  # ONNX Runtime threads per model instance; 0 = the cores shared among instances
    layout: str = DEFAULT_LAYOUT  # "ensemble" (three steps) or "fused" (one python model)
    preferred_batch_sizes: tuple[int, ...] = ()  # for the model step (or the fused model)
    # Model-step flavour: "python-ort" runs anywhere the python backend does (the bundled
    # CPU server); "onnxruntime" and "tensorrt" use the Triton container's own backends.
    backend: str = "python-ort"
    ort_tensorrt_precision: str | None = None  # onnxruntime flavour: TensorRT EP, "FP16"/"FP32"

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise RepositoryError(f"layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.backend not in BACKENDS:
            raise RepositoryError(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.layout == "fused" and self.backend != "python-ort":
            raise RepositoryError("the fused layout is one python model: it runs ONNX Runtime itself "
                                  "(--backend python-ort); use the ensemble layout for the container backends")
        if any(not 1 <= size <= self.max_batch_size for size in self.preferred_batch_sizes):
            raise RepositoryError(
                f"preferred batch sizes {self.preferred_batch_sizes} must lie in 1..{self.max_batch_size}"
            )
        if self.model_queue_delay_us < 0:
            raise RepositoryError("the model queue delay must be >= 0 µs")
        if not 1 <= self.max_batch_size <= 4096:
            raise RepositoryError(f"max batch size {self.max_batch_size} is outside 1..4096")
        for field_name in ("tokenizer_instances", "model_instances", "postprocess_instances"):
            if getattr(self, field_name) < 1:
                raise RepositoryError(f"{field_name.replace('_', ' ')} must be at least 1")
        if self.intra_op_threads < 0:
            raise RepositoryError("intra-op threads must be 0 (one per core) or more")


@dataclass(frozen=True)
class RepositoryLayout:
    root: Path
    name: str
    kind: str = DEFAULT_LAYOUT
    variants: tuple[str, ...] = ()  # extra ensembles NAME_<variant> over NAME_model_<variant>

    @property
    def steps(self) -> tuple[str, ...]:
        return contract.step_names(self.name) if self.kind == "ensemble" else ()

    @property
    def model_dirs(self) -> tuple[Path, ...]:
        extra = [n for v in self.variants for n in (variant_ensemble(self.name, v), variant_model(self.name, v))]
        return tuple(self.root / n for n in (self.name, *self.steps, *extra))

    @property
    def stale_dirs(self) -> tuple[Path, ...]:
        """Step folders of the other layout under the same name, removed when this one is written."""
        return () if self.kind == "ensemble" else tuple(self.root / n for n in contract.step_names(self.name))

    @property
    def ensemble_dir(self) -> Path:
        return self.root / self.name

    @property
    def onnx_file(self) -> Path:
        holder = self.steps[1] if self.steps else self.name
        return self.root / holder / VERSION / "model.onnx"

    @property
    def manifest(self) -> Path:
        return self.ensemble_dir / MANIFEST


def variant_ensemble(name: str, variant: str) -> str:
    return f"{name}_{variant}"


def variant_model(name: str, variant: str) -> str:
    return f"{name}_model_{variant}"


def platform_step(model: PythonModel, serving: ServingOptions, cc_plans: dict[str, str]) -> PlatformModel:
    """The same model step for the container's ONNX Runtime or TensorRT backend."""
    tensorrt = serving.backend == "tensorrt"
    return PlatformModel(
        name=model.name,
        platform="tensorrt_plan" if tensorrt else "onnxruntime_onnx",
        inputs=model.inputs,
        outputs=model.outputs,
        max_batch_size=model.max_batch_size,
        default_model_filename="model.plan" if tensorrt else "model.onnx",
        instance_count=model.instance_count,
        batching=model.batching,
        cc_model_filenames=cc_plans if tensorrt else {},
        ort_tensorrt_precision=None if tensorrt else serving.ort_tensorrt_precision,
    )


def int64(name: str) -> Tensor:
    return Tensor(name, "TYPE_INT64", (-1,))


def postprocess_settings(checkpoint: Checkpoint, entities: EntitySettings | None) -> dict:
    settings = {
        "pooling": checkpoint.pooling.mode,
        "normalize": checkpoint.pooling.normalize,
        "labels": list(checkpoint.labels),
        "multi_label": checkpoint.multi_label,
    }
    if entities is not None:
        settings.update(asdict(entities), labels=list(entities.labels), ignore_labels=list(entities.ignore_labels))
    return settings


def step_models(
    name: str,
    checkpoint: Checkpoint,
    settings: TokenizerSettings,
    serving: ServingOptions,
    entities: EntitySettings | None = None,
) -> tuple[PythonModel, PythonModel, PythonModel]:
    """The three python-backend step configs for ``checkpoint``'s task."""
    tokenizer_name, model_name, postprocess_name = contract.step_names(name)
    task = checkpoint.task
    width = checkpoint.hidden_size if task.name == "embeddings" else len(checkpoint.labels)
    token_tensors = tuple(int64(n) for n in checkpoint.input_names)
    text = Tensor(contract.INPUT_TEXT, "TYPE_STRING", (1,))
    alignment = (
        (Tensor(contract.TENSOR_OFFSETS, "TYPE_INT64", (-1, 2)), int64(contract.TENSOR_SPECIAL_TOKENS))
        if task.token_alignment
        else ()
    )
    truncated = Tensor(contract.OUTPUT_TRUNCATED, "TYPE_BOOL", (1,))
    model_output = Tensor(
        task.model_output, "TYPE_FP32", (-1, width) if task.model_output_has_sequence_axis else (width,)
    )
    mbs = serving.max_batch_size
    tokenizer = PythonModel(
        name=tokenizer_name,
        inputs=(text,),
        outputs=(*token_tensors, *alignment, truncated),
        max_batch_size=mbs,
        instance_count=serving.tokenizer_instances,
        parameters={"settings": settings.to_json(), "truncated_output": contract.OUTPUT_TRUNCATED},
    )
    model = PythonModel(
        name=model_name,
        inputs=token_tensors,
        outputs=(model_output,),
        max_batch_size=mbs,
        instance_count=serving.model_instances,
        batching=Batching(serving.model_queue_delay_us, serving.preferred_batch_sizes),
        parameters={"onnx_file": "model.onnx", "intra_op_threads": str(serving.intra_op_threads)},
    )
    available = {
        t.name: t for t in (model_output, text, int64("attention_mask"), int64("input_ids"), *alignment)
    }
    postprocess = PythonModel(
        name=postprocess_name,
        inputs=tuple(available[n] for n in task.postprocess_inputs),
        outputs=tuple(
            Tensor(o.name, o.data_type, tuple(width if d == HIDDEN else d for d in o.dims)) for o in task.outputs
        ),
        max_batch_size=mbs,
        instance_count=serving.postprocess_instances,
        parameters={"task": task.name, "settings": json.dumps(postprocess_settings(checkpoint, entities))},
    )
    return tokenizer, model, postprocess


def contract_parameters(checkpoint: Checkpoint, settings: TokenizerSettings) -> dict[str, str]:
    """What a client reads from ``NAME``'s config, whatever the layout."""
    return {
        contract.PARAM_TASK: checkpoint.task.name,
        contract.PARAM_LABELS: json.dumps(list(checkpoint.labels)),
        contract.PARAM_MULTI_LABEL: json.dumps(checkpoint.multi_label),
        contract.PARAM_MAX_TEXT_BYTES: str(settings.max_text_bytes),
        contract.PARAM_MAX_SEQUENCE_LENGTH: str(settings.max_length),
    }


def fused_model(
    name: str, checkpoint: Checkpoint, settings: TokenizerSettings, serving: ServingOptions
) -> PythonModel:
    """One python-backend model: TEXT in, the ensemble's outputs out, the same parameters."""
    tokenizer, model, postprocess = step_models(name, checkpoint, settings, serving)
    answer = AnswerSettings(
        task=checkpoint.task.name,
        model_output=model.outputs[0].name,
        pooling=checkpoint.pooling.mode,
        normalize=checkpoint.pooling.normalize,
        labels=tuple(checkpoint.labels),
        multi_label=checkpoint.multi_label,
    )
    return PythonModel(
        name=name,
        inputs=tokenizer.inputs,
        outputs=(*postprocess.outputs, tokenizer.outputs[-1]),
        max_batch_size=serving.max_batch_size,
        instance_count=serving.model_instances,
        batching=Batching(serving.model_queue_delay_us, serving.preferred_batch_sizes),
        parameters={
            **contract_parameters(checkpoint, settings),
            "settings": settings.to_json(),
            "answer": answer.to_json(),
            "truncated_output": contract.OUTPUT_TRUNCATED,
            "onnx_file": "model.onnx",
            "intra_op_threads": str(serving.intra_op_threads),
        },
    )


def ensemble_model(
    name: str,
    steps: tuple[PythonModel, PythonModel, PythonModel],
    checkpoint: Checkpoint,
    settings: TokenizerSettings,
    entities: EntitySettings | None = None,
) -> Ensemble:
    """Tie the steps together; every tensor keeps its step-level name inside the ensemble."""
    tokenizer, model, postprocess = steps

    def identity(tensors):
        return {t.name: t.name for t in tensors}

    parameters = contract_parameters(checkpoint, settings)
    if entities is not None:
        parameters[contract.PARAM_AGGREGATION] = entities.aggregation
    return Ensemble(
        name=name,
        inputs=tokenizer.inputs,
        outputs=(*postprocess.outputs, tokenizer.outputs[-1]),
        max_batch_size=tokenizer.max_batch_size,
        steps=(
            EnsembleStep(tokenizer.name, identity(tokenizer.inputs), identity(tokenizer.outputs)),
            EnsembleStep(model.name, identity(model.inputs), identity(model.outputs)),
            EnsembleStep(postprocess.name, identity(postprocess.inputs), identity(postprocess.outputs)),
        ),
        parameters=parameters,
    )


def backend_source(module: str) -> bytes:
    return resources.files("hf2triton.backends").joinpath(f"{module}.py").read_bytes()


def check_destination(layout: RepositoryLayout, fingerprint: str, overwrite: bool) -> None:
    """Refuse to replace another model's folders unless ``overwrite``."""
    if layout.root.exists() and not layout.root.is_dir():
        raise RepositoryError(f"output {layout.root} exists and is not a directory")
    existing = [d for d in (*layout.model_dirs, *layout.stale_dirs) if d.exists()]
    if not existing or overwrite:
        return
    previous = None
    if layout.manifest.exists():
        try:
            previous = json.loads(layout.manifest.read_text())["checkpoint"]["fingerprint"]
        except (ValueError, KeyError):
            previous = None
    if previous != fingerprint:
        names = ", ".join(d.name for d in existing)
        raise RepositoryError(
            f"{layout.root} already holds a different model under {names}; "
            "pass --overwrite to replace it, or --name to export beside it"
        )


def write_model(
    staging: Path, config: PythonModel | PlatformModel | Ensemble, files: dict[str, bytes | Path]
) -> None:
    """One model folder: version files first, config.pbtxt last."""
    folder = staging / config.name
    version = folder / VERSION
    version.mkdir(parents=True)
    for relative, content in files.items():
        target = version / relative
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content)
    builders = {Ensemble: build_ensemble, PythonModel: build_python_model, PlatformModel: build_platform_model}
    built = builders[type(config)](config)
    (folder / "config.pbtxt").write_text(to_pbtxt(built))


def write_repository(
    root: Path,
    name: str,
    checkpoint: Checkpoint,
    onnx_file: Path,
    tokenizer_json: Path,
    settings: TokenizerSettings,
    serving: ServingOptions,
    manifest: dict,
    reports: dict[str, dict],
    overwrite: bool = False,
    variants: dict[str, Path] | None = None,
    plans: dict[str, Path] | None = None,
    entities: EntitySettings | None = None,
) -> RepositoryLayout:
    """Write the model folders for ``name`` under ``root`` and return their layout.

    ``onnx_file`` is what ``NAME`` serves. In the ensemble layout each of ``variants``
    (name → ONNX file) gets its own ensemble ``NAME_<variant>`` sharing the tokenizer and
    postprocess steps, and with the tensorrt backend ``plans`` maps GPU compute capability
    → engine file for the model step.
    """
    variants = variants or {}
    if serving.layout == "fused":
        if entities is not None:
            raise RepositoryError("token classification needs the ensemble layout (--layout ensemble)")
        if variants:
            log.warning("the fused layout serves one variant; %s not written", ", ".join(variants))
            variants = {}
    layout = RepositoryLayout(Path(root).resolve(), name, serving.layout, tuple(variants))
    check_destination(layout, checkpoint.fingerprint, overwrite)
    layout.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=layout.root.parent, prefix=f".{name}-staging-") as tmp:
        staging = Path(tmp)
        if layout.kind == "fused":
            write_fused(staging, name, checkpoint, onnx_file, tokenizer_json, settings, serving)
        else:
            write_ensemble(staging, name, checkpoint, onnx_file, tokenizer_json, settings, serving,
                           entities, variants, plans or {})
        (staging / name / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for report_name, report in reports.items():
            (staging / name / f"{report_name}.json").write_text(json.dumps(report, indent=2) + "\n")
        for folder in layout.model_dirs:
            replace_dir(staging / folder.name, folder)
        for folder in layout.stale_dirs:
            if folder.exists():
                shutil.rmtree(folder)
    log.info("wrote %s %s to %s", layout.kind, name, layout.root)
    return layout


def write_model_step(
    staging: Path, model: PythonModel, onnx_file: Path, serving: ServingOptions, plans: dict[str, Path]
) -> None:
    """The model step in the chosen flavour: python-ort (model.py + model.onnx), the
    container's onnxruntime backend (model.onnx), or tensorrt (one plan per GPU arch)."""
    if serving.backend == "python-ort":
        write_model(staging, model, {"model.py": backend_source("onnx_model"), "model.onnx": onnx_file})
        return
    if serving.backend == "onnxruntime":
        write_model(staging, platform_step(model, serving, {}), {"model.onnx": onnx_file})
        return
    if not plans:
        raise RepositoryError("the tensorrt backend needs engines: export with --engines on a GPU machine")
    files: dict[str, bytes | Path] = {}
    cc_plans = {}
    for capability, plan in sorted(plans.items()):
        filename = "model.plan" if len(plans) == 1 else f"model.sm{capability.replace('.', '')}.plan"
        files[filename] = plan
        files[f"{filename}.json"] = plan.with_name(plan.name + ".json")
        cc_plans[capability] = filename
    write_model(staging, platform_step(model, serving, cc_plans if len(plans) > 1 else {}), files)


def write_ensemble(
    staging: Path, name: str, checkpoint: Checkpoint, onnx_file: Path, tokenizer_json: Path,
    settings: TokenizerSettings, serving: ServingOptions, entities: EntitySettings | None,
    variants: dict[str, Path], plans: dict[str, Path],
) -> None:
    steps = step_models(name, checkpoint, settings, serving, entities)
    tokenizer, model, postprocess = steps
    write_model(staging, tokenizer, {"model.py": backend_source("tokenizer"), "tokenizer.json": tokenizer_json})
    write_model_step(staging, model, onnx_file, serving, plans)
    post_files: dict[str, bytes | Path] = {"model.py": backend_source("postprocess")}
    if entities is not None:  # words are the tokenizer's own tokens, decoded as transformers does
        post_files["tokenizer.json"] = tokenizer_json
    write_model(staging, postprocess, post_files)
    write_model(staging, ensemble_model(name, steps, checkpoint, settings, entities), {})
    for variant, variant_file in variants.items():
        variant_step = replace(model, name=variant_model(name, variant))
        flavour = "python-ort" if serving.backend == "python-ort" else "onnxruntime"
        write_model_step(staging, variant_step, variant_file, replace(serving, backend=flavour), {})
        ensemble = ensemble_model(variant_ensemble(name, variant), (tokenizer, variant_step, postprocess),
                                  checkpoint, settings, entities)
        write_model(staging, ensemble, {})


def write_fused(staging: Path, name: str, checkpoint: Checkpoint, onnx_file: Path, tokenizer_json: Path,
                settings: TokenizerSettings, serving: ServingOptions) -> None:
    """The fused model's folder: model.py plus the three step modules it imports, copied beside it."""
    files: dict[str, bytes | Path] = {"model.py": backend_source("fused"), "tokenizer.json": tokenizer_json,
                                      "model.onnx": onnx_file}
    files.update({f"{module}.py": backend_source(module) for module in FUSED_STEP_MODULES})
    write_model(staging, fused_model(name, checkpoint, settings, serving), files)


def replace_dir(new: Path, destination: Path) -> None:
    """Move ``new`` to ``destination``, removing what was there only after the move succeeded."""
    old = destination.with_name(f".{destination.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if destination.exists():
        destination.rename(old)
    shutil.move(str(new), str(destination))
    if old.exists():
        shutil.rmtree(old)
