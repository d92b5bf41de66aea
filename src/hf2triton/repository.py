"""Write the Triton model repository: ensemble ``NAME`` = tokenizer → model → postprocess,
or (``layout="fused"``) one python-backend model ``NAME`` doing all three. Both keep the
client contract of :mod:`hf2triton.contract`. Precision variants are served beside
``NAME`` as ensembles ``NAME_<variant>`` sharing its tokenizer and postprocess steps.

The repository is self-contained and relocatable: step code (``model.py``), the ONNX
file, tokenizer.json, labels and settings are copied in; nothing points back to the
checkpoint. It is staged outside the repository folder and moved into place at the
end, so a running tritonserver never sees half a model, and a failed export leaves
the previous repository as it was. Files are written 0644 and folders 0755 whatever
the umask: nobody else can change what the server loads.

Versions (see :func:`plan_version`): the models of an ensemble always carry the
same version numbers. Exporting into a repository that already holds ``NAME``:

- the same checkpoint again rewrites its version in place (idempotent);
- another checkpoint with the same serving interface (inputs, outputs, labels, limits,
  tokenizer settings: everything in the config files besides instances, batching,
  warm-up and version policy) is added as the next version, or as ``--version N``;
  a running server in poll mode (or after an explicit load) serves it without
  dropping requests, and the version policy (default ``latest:1``) decides which
  versions stay loaded;
- a model with another interface is refused: a config file is shared by all versions
  of a model, so it cannot be a new version. ``--overwrite`` replaces the model with
  all its versions; ``--name`` exports beside it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from hf2triton import contract
from hf2triton.backends.fused import STEP_MODULES as FUSED_STEP_MODULES
from hf2triton.backends.fused import AnswerSettings
from hf2triton.backends.onnx_model import InputLimits
from hf2triton.backends.postprocess import EntitySettings
from hf2triton.backends.tokenizer import TokenizerSettings
from hf2triton.export.checkpoint import Checkpoint
from hf2triton.engines.check import sidecar_path
from hf2triton.errors import RepositoryError
from hf2triton.tasks import HIDDEN
from hf2triton.triton_config import (
    Batching,
    Ensemble,
    EnsembleStep,
    PlatformModel,
    PythonModel,
    Tensor,
    VersionPolicy,
    WarmupSample,
    build_ensemble,
    build_platform_model,
    build_python_model,
    parse_pbtxt,
    to_pbtxt,
)

log = logging.getLogger(__name__)

BACKENDS = ("python-ort", "onnxruntime", "tensorrt")
LAYOUTS = ("ensemble", "fused")
DEFAULT_LAYOUT = "ensemble"
MANIFEST = "hf2triton.json"  # what built it, from which checkpoint: NAME/ (latest export) and NAME/<version>/
FILE_MODE, DIR_MODE = 0o644, 0o755
# Config fields that may change between versions: they are about serving, not the model.
SERVING_FIELDS = ("instance_group", "dynamic_batching", "model_warmup", "version_policy")
SERVING_PARAMETERS = ("intra_op_threads", "max_batch_tokens")


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
    version_policy: VersionPolicy = VersionPolicy()  # which versions Triton serves (default: the newest)
    warmup: bool = True  # model_warmup samples (one per sequence bucket) in the step configs
    # python-ort model step and fused model: texts sorted by length across requests, run in
    # sub-batches of at most this many positions (like TEI's --max-batch-tokens). Not measured
    # yet: 32 texts of 256 tokens; 0 pads to buckets instead.
    max_batch_tokens: int = 8192

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
        if self.max_batch_tokens < 0:
            raise RepositoryError("max batch tokens must be 0 (pad to buckets) or more")


@dataclass(frozen=True)
class RepositoryLayout:
    root: Path
    name: str
    version: int = 1  # the version this export wrote
    kind: str = DEFAULT_LAYOUT
    variants: tuple[str, ...] = ()  # extra ensembles NAME_<variant> over NAME_model_<variant>

    @property
    def steps(self) -> tuple[str, ...]:
        return contract.step_names(self.name) if self.kind == "ensemble" else ()

    @property
    def core_dirs(self) -> tuple[Path, ...]:
        """``NAME`` and its steps: what versions are planned over."""
        return tuple(self.root / n for n in (self.name, *self.steps))

    @property
    def model_dirs(self) -> tuple[Path, ...]:
        extra = [n for v in self.variants for n in (variant_model(self.name, v), variant_ensemble(self.name, v))]
        return (*self.core_dirs, *(self.root / n for n in extra))

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
        return self.root / holder / str(self.version) / "model.onnx"

    def versions(self) -> tuple[int, ...]:
        """Versions present in every one of the core model folders, ascending."""
        found = [set(_numeric_dirs(folder)) for folder in self.core_dirs if folder.is_dir()]
        return tuple(sorted(set.intersection(*found))) if found else ()

    @property
    def manifest(self) -> Path:
        return self.ensemble_dir / MANIFEST


def _numeric_dirs(folder: Path) -> list[int]:
    return [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0]


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
        version_policy=model.version_policy,
        warmup=model.warmup,
    )


def int64(name: str) -> Tensor:
    return Tensor(name, "TYPE_INT64", (-1,))


def with_sequence(tensor: Tensor, length: int) -> Tensor:
    """``tensor`` with its variable sequence axis (-1) fixed to ``length``, for warm-up data."""
    return Tensor(tensor.name, tensor.data_type, tuple(length if d == -1 else d for d in tensor.dims))


def bucket_warmup(inputs: tuple[Tensor, ...], buckets: tuple[int, ...]) -> tuple[WarmupSample, ...]:
    """One zero-filled sample per sequence bucket (one sample when no input has a sequence axis).

    The tokenizer pads every request to a bucket, so these are exactly the shapes the
    model and postprocess steps will see; each first run of a shape is slow in ONNX Runtime.
    """
    if not any(-1 in t.dims for t in inputs):
        return (WarmupSample("warmup", inputs),)
    return tuple(WarmupSample(f"bucket_{b}", tuple(with_sequence(t, b) for t in inputs)) for b in buckets)


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
    policy = serving.version_policy
    # The python model step takes ragged requests (each padded to its own longest text) and
    # sorts their texts by length; the container's native model steps take bucketed tensors.
    ragged = serving.backend == "python-ort" and serving.max_batch_tokens > 0
    model_inputs = tuple(replace(t, ragged=True) for t in token_tensors) if ragged else token_tensors

    def warmup(inputs: tuple[Tensor, ...]) -> tuple[WarmupSample, ...]:
        return bucket_warmup(inputs, settings.buckets) if serving.warmup else ()

    tokenizer = PythonModel(
        name=tokenizer_name,
        inputs=(text,),
        outputs=(*token_tensors, *alignment, truncated),
        max_batch_size=mbs,
        instance_count=serving.tokenizer_instances,
        parameters={"settings": replace(settings, ragged=ragged).to_json(),
                    "truncated_output": contract.OUTPUT_TRUNCATED},
        version_policy=policy,
        warmup=warmup((text,)),  # an empty text: loads the Rust tokenizer's first-call state
    )
    model = PythonModel(
        name=model_name,
        inputs=model_inputs,
        outputs=(model_output,),
        max_batch_size=mbs,
        instance_count=serving.model_instances,
        batching=Batching(serving.model_queue_delay_us, serving.preferred_batch_sizes),
        parameters={"onnx_file": "model.onnx", "intra_op_threads": str(serving.intra_op_threads),
                    "max_batch_tokens": str(serving.max_batch_tokens if ragged else 0),
                    "limits": InputLimits(settings.vocab_size, settings.type_vocab_size, settings.max_length,
                                          settings.pad_id).to_json()},
        version_policy=policy,
        warmup=warmup(token_tensors),
    )
    available = {
        t.name: t for t in (model_output, text, int64("attention_mask"), int64("input_ids"), *alignment)
    }
    postprocess_inputs = tuple(available[n] for n in task.postprocess_inputs)
    postprocess = PythonModel(
        name=postprocess_name,
        inputs=postprocess_inputs,
        outputs=tuple(
            Tensor(o.name, o.data_type, tuple(width if d == HIDDEN else d for d in o.dims)) for o in task.outputs
        ),
        max_batch_size=mbs,
        instance_count=serving.postprocess_instances,
        parameters={"task": task.name, "settings": json.dumps(postprocess_settings(checkpoint, entities))},
        version_policy=policy,
        # Zero-filled offsets and texts mean nothing to the entity grouping: no warm-up there.
        warmup=() if task.token_alignment else warmup(postprocess_inputs),
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
            "max_batch_tokens": str(serving.max_batch_tokens),
        },
        version_policy=serving.version_policy,
        warmup=bucket_warmup(tokenizer.inputs, settings.buckets) if serving.warmup else (),
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
        version_policy=model.version_policy,
    )


def backend_source(module: str) -> bytes:
    return resources.files("hf2triton.backends").joinpath(f"{module}.py").read_bytes()


@dataclass(frozen=True)
class VersionPlan:
    """Where an export goes: ``version`` of each model, and whether the old folders go entirely."""

    version: int
    replace_all: bool  # True: a fresh model (nothing there, or --overwrite); False: add/rewrite one version
    reason: str


def read_fingerprint(layout: RepositoryLayout, version: int) -> str | None:
    """The checkpoint fingerprint recorded for ``version`` (per-version manifest, else the top-level one)."""
    candidates = [layout.ensemble_dir / str(version) / MANIFEST, layout.manifest]
    for path in candidates:
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if manifest.get("version", 1) == version:
            return manifest.get("checkpoint", {}).get("fingerprint")
    return None


def interface(config: pb.ModelConfig) -> pb.ModelConfig:
    """The part of a config that every version of a model shares (serving knobs removed)."""
    shared = pb.ModelConfig()
    shared.CopyFrom(config)
    for name in SERVING_FIELDS:
        shared.ClearField(name)
    for key in SERVING_PARAMETERS:
        if key in shared.parameters:
            del shared.parameters[key]
    return shared


def interface_differences(layout: RepositoryLayout, configs: dict[str, pb.ModelConfig]) -> list[str]:
    """Each model whose existing config.pbtxt differs from ``configs`` beyond serving knobs, and how."""
    problems = []
    for name, new in configs.items():
        path = layout.root / name / "config.pbtxt"
        try:
            old = interface(parse_pbtxt(path.read_text()))
        except (OSError, text_format.ParseError) as error:
            problems.append(f"{name}: cannot read {path} ({error})")
            continue
        mine = interface(new)
        if old != mine:
            fields = sorted(
                {f.name for f, _ in old.ListFields()} ^ {f.name for f, _ in mine.ListFields()}
                | {f.name for f, v in old.ListFields() if getattr(mine, f.name) != v}
            )
            problems.append(f"{name} differs in {', '.join(fields)}")
    return problems


def plan_version(
    layout: RepositoryLayout,
    fingerprint: str,
    configs: dict[str, pb.ModelConfig],
    requested: int | None = None,
    overwrite: bool = False,
) -> VersionPlan:
    """Decide which version an export writes (the rules are in the module docstring).

    Raises RepositoryError naming the conflict and the way out.
    """
    if layout.root.exists() and not layout.root.is_dir():
        raise RepositoryError(f"output {layout.root} exists and is not a directory")
    if requested is not None and requested < 1:
        raise RepositoryError(f"--version must be 1 or more, not {requested}")
    existing = [d for d in layout.core_dirs if d.exists()]
    stale = [d for d in layout.stale_dirs if d.exists()]
    if not existing and not stale:
        return VersionPlan(requested or 1, True, "new model")
    if overwrite:
        return VersionPlan(requested or 1, True, "--overwrite: replacing every version")
    names = ", ".join(d.name for d in (*existing, *stale))
    switching = bool(stale) or (layout.kind == "ensemble" and existing == [layout.ensemble_dir])
    if switching:  # the other layout (fused ↔ ensemble) is there under this name
        previous = _numeric_dirs(layout.ensemble_dir) if layout.ensemble_dir.is_dir() else []
        if previous and read_fingerprint(layout, max(previous)) == fingerprint:
            return VersionPlan(requested or max(previous), True, "same checkpoint in the other layout: replacing it")
        raise RepositoryError(
            f"{layout.root} already holds a different model under {names}; "
            "pass --overwrite to replace it, or --name to export beside it"
        )
    versions = layout.versions()
    if len(existing) < len(layout.core_dirs) or not versions:
        raise RepositoryError(
            f"{layout.root} holds an incomplete model under {names}; pass --overwrite to replace it"
        )
    latest = versions[-1]
    target = requested if requested is not None else latest
    if target in versions and read_fingerprint(layout, target) == fingerprint:
        return VersionPlan(target, False, f"same checkpoint: rewriting version {target}")
    differences = interface_differences(layout, configs)
    if differences:
        raise RepositoryError(
            f"{layout.root} already holds a different model under {names}, with another serving interface "
            f"({'; '.join(differences)}), so it cannot become a new version of it; "
            "pass --overwrite to replace it (all versions), or --name to export beside it"
        )
    if requested is None:
        return VersionPlan(latest + 1, False, f"another checkpoint: adding version {latest + 1}")
    if requested in versions:
        raise RepositoryError(
            f"version {requested} of {layout.name} in {layout.root} holds another checkpoint; choose another "
            f"--version (existing: {', '.join(map(str, versions))}), or --overwrite to replace all versions"
        )
    return VersionPlan(requested, False, f"adding version {requested}")


def restrict_permissions(folder: Path) -> None:
    """Folders 0755, files 0644 below ``folder`` (whatever the umask): only the owner writes."""
    folder.chmod(DIR_MODE)
    for path in folder.rglob("*"):
        path.chmod(DIR_MODE if path.is_dir() else FILE_MODE)


def stage_model(staging: Path, config: pb.ModelConfig, version: int, files: dict[str, bytes | Path]) -> Path:
    """One model folder in ``staging``: ``<version>/`` with the files, and config.pbtxt."""
    folder = staging / config.name
    version_dir = folder / str(version)
    version_dir.mkdir(parents=True)
    for relative, content in files.items():
        target = version_dir / relative
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content)
    (folder / "config.pbtxt").write_text(to_pbtxt(config))
    restrict_permissions(folder)
    return folder


def install_version(staged: Path, destination: Path, version: int) -> None:
    """Move a staged version folder into an existing model folder, then swap config.pbtxt atomically.

    Version first, config last: a server polling the repository sees either the old state
    or a complete new version.
    """
    replace_dir(staged / str(version), destination / str(version))
    os.replace(staged / "config.pbtxt", destination / "config.pbtxt")
    destination.chmod(DIR_MODE)


def model_step_files(
    model: PythonModel, onnx_file: Path, serving: ServingOptions, plans: dict[str, Path]
) -> tuple[pb.ModelConfig, dict[str, bytes | Path]]:
    """The model step in the chosen flavour: python-ort (model.py + model.onnx), the
    container's onnxruntime backend (model.onnx), or tensorrt (one plan per GPU arch)."""
    if serving.backend == "python-ort":
        return build_python_model(model), {"model.py": backend_source("onnx_model"), "model.onnx": onnx_file}
    if serving.backend == "onnxruntime":
        return build_platform_model(platform_step(model, serving, {})), {"model.onnx": onnx_file}
    if not plans:
        raise RepositoryError("the tensorrt backend needs engines: export with --engines on a GPU machine")
    files: dict[str, bytes | Path] = {}
    cc_plans = {}
    for capability, plan in sorted(plans.items()):
        filename = "model.plan" if len(plans) == 1 else f"model.sm{capability.replace('.', '')}.plan"
        files[filename] = plan
        files[sidecar_path(Path(filename)).name] = sidecar_path(plan)
        cc_plans[capability] = filename
    return build_platform_model(platform_step(model, serving, cc_plans if len(plans) > 1 else {})), files


def repository_models(
    name: str, checkpoint: Checkpoint, onnx_file: Path, tokenizer_json: Path, settings: TokenizerSettings,
    serving: ServingOptions, entities: EntitySettings | None, variants: dict[str, Path], plans: dict[str, Path],
) -> dict[str, tuple[pb.ModelConfig, dict[str, bytes | Path]]]:
    """Every model of the export: its config and the files of its version folder, steps first."""
    if serving.layout == "fused":
        files: dict[str, bytes | Path] = {"model.py": backend_source("fused"), "tokenizer.json": tokenizer_json,
                                          "model.onnx": onnx_file}
        files.update({f"{module}.py": backend_source(module) for module in FUSED_STEP_MODULES})
        return {name: (build_python_model(fused_model(name, checkpoint, settings, serving)), files)}
    steps = step_models(name, checkpoint, settings, serving, entities)
    tokenizer, model, postprocess = steps
    post_files: dict[str, bytes | Path] = {"model.py": backend_source("postprocess")}
    if entities is not None:  # words are the tokenizer's own tokens, decoded as transformers does
        post_files["tokenizer.json"] = tokenizer_json
    models = {
        tokenizer.name: (build_python_model(tokenizer), {"model.py": backend_source("tokenizer"),
                                                         "tokenizer.json": tokenizer_json}),
        model.name: model_step_files(model, onnx_file, serving, plans),
        postprocess.name: (build_python_model(postprocess), post_files),
        name: (build_ensemble(ensemble_model(name, steps, checkpoint, settings, entities)), {}),
    }
    flavour = replace(serving, backend="python-ort" if serving.backend == "python-ort" else "onnxruntime")
    for variant, variant_file in variants.items():
        variant_step = replace(model, name=variant_model(name, variant))
        models[variant_step.name] = model_step_files(variant_step, variant_file, flavour, {})
        ensemble = ensemble_model(variant_ensemble(name, variant), (tokenizer, variant_step, postprocess),
                                  checkpoint, settings, entities)
        models[ensemble.name] = (build_ensemble(ensemble), {})
    return models


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
    version: int | None = None,
    variants: dict[str, Path] | None = None,
    plans: dict[str, Path] | None = None,
    entities: EntitySettings | None = None,
) -> RepositoryLayout:
    """Write version ``version`` (default: see :func:`plan_version`) of every model of ``name``.

    ``onnx_file`` is what ``NAME`` serves. In the ensemble layout each of ``variants``
    (name → ONNX file) gets its own ensemble ``NAME_<variant>`` sharing the tokenizer and
    postprocess steps; with the tensorrt backend ``plans`` maps GPU compute capability →
    engine file for the model step.
    """
    variants = dict(variants or {})
    if serving.layout == "fused":
        if entities is not None:
            raise RepositoryError("token classification needs the ensemble layout (--layout ensemble)")
        if variants:
            log.warning("the fused layout serves one variant; %s not written", ", ".join(variants))
            variants = {}
    root = Path(root).resolve()
    models = repository_models(name, checkpoint, onnx_file, tokenizer_json, settings, serving, entities,
                               variants, plans or {})
    planned = RepositoryLayout(root, name, kind=serving.layout, variants=tuple(variants))
    core = {d.name: models[d.name][0] for d in planned.core_dirs}
    plan = plan_version(planned, checkpoint.fingerprint, core, version, overwrite)
    layout = replace(planned, version=plan.version)
    log.info("%s: %s", name, plan.reason)
    layout.root.mkdir(parents=True, exist_ok=True)
    manifest = {**manifest, "version": plan.version}
    texts = {MANIFEST: json.dumps(manifest, indent=2) + "\n"}
    texts.update({f"{n}.json": json.dumps(r, indent=2) + "\n" for n, r in reports.items()})
    ensemble_files = {**models[name][1], **{n: t.encode() for n, t in texts.items()}}
    with tempfile.TemporaryDirectory(dir=layout.root.parent, prefix=f".{name}-staging-") as tmp:
        staging = Path(tmp)
        staged = {
            n: stage_model(staging, config, plan.version, ensemble_files if n == name else files)
            for n, (config, files) in models.items()
        }
        for report_name, text in texts.items():  # the latest export's reports, beside config.pbtxt
            (staged[name] / report_name).write_text(text)
            (staged[name] / report_name).chmod(FILE_MODE)
        ordered = [d for d in layout.model_dirs if d.name != name] + [layout.ensemble_dir]
        for folder in ordered:  # steps first, the ensemble last
            if plan.replace_all or not folder.exists():
                replace_dir(staged[folder.name], folder)
            else:
                install_version(staged[folder.name], folder, plan.version)
                for report_name in texts if folder.name == name else ():
                    os.replace(staged[name] / report_name, folder / report_name)
        for folder in layout.stale_dirs:
            if folder.exists():
                shutil.rmtree(folder)
    log.info("wrote version %d of %s %s to %s", plan.version, layout.kind, name, layout.root)
    return layout


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
