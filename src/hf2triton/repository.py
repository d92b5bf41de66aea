"""Write the Triton model repository: ensemble ``NAME`` = tokenizer → model → postprocess.

The repository is self-contained and relocatable: step code (``model.py``), the ONNX
file, tokenizer.json, labels and settings are copied in; nothing points back to the
checkpoint. It is staged outside the repository folder and moved into place at the
end, so a running tritonserver never sees half a model, and a failed export leaves
the previous repository as it was. Files are written 0644 and folders 0755 whatever
the umask: nobody else can change what the server loads.

Versions (see :func:`plan_version`): the four models of an ensemble always carry the
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
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hf2triton import contract
from hf2triton.backends.tokenizer import TokenizerSettings
from hf2triton.checkpoint import Checkpoint
from hf2triton.errors import RepositoryError
from hf2triton.tasks import HIDDEN
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from hf2triton.triton_config import (
    Batching,
    Ensemble,
    EnsembleStep,
    PythonModel,
    Tensor,
    VersionPolicy,
    WarmupSample,
    build_ensemble,
    build_python_model,
    parse_pbtxt,
    to_pbtxt,
)

log = logging.getLogger(__name__)

MANIFEST = "hf2triton.json"  # what built it, from which checkpoint: NAME/ (latest export) and NAME/<version>/
FILE_MODE, DIR_MODE = 0o644, 0o755
# Config fields that may change between versions: they are about serving, not the model.
SERVING_FIELDS = ("instance_group", "dynamic_batching", "model_warmup", "version_policy")
SERVING_PARAMETERS = ("intra_op_threads",)


@dataclass(frozen=True)
class ServingOptions:
    """How the served steps batch and how many instances run (tuned by measurement later)."""

    max_batch_size: int = 32
    tokenizer_instances: int = 1
    model_instances: int = 1
    postprocess_instances: int = 1
    model_queue_delay_us: int = 0
    intra_op_threads: int = 0  # ONNX Runtime threads per model instance; 0 = one per core
    version_policy: VersionPolicy = VersionPolicy()  # which versions Triton serves (default: the newest)
    warmup: bool = True  # model_warmup samples (one per sequence bucket) in the step configs

    def __post_init__(self):
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
    version: int = 1  # the version this export wrote

    @property
    def steps(self) -> tuple[str, str, str]:
        return contract.step_names(self.name)

    @property
    def model_dirs(self) -> tuple[Path, ...]:
        return tuple(self.root / n for n in (self.name, *self.steps))

    @property
    def ensemble_dir(self) -> Path:
        return self.root / self.name

    @property
    def onnx_file(self) -> Path:
        return self.root / self.steps[1] / str(self.version) / "model.onnx"

    def versions(self) -> tuple[int, ...]:
        """Versions present in every one of the four model folders, ascending."""
        found = [set(_numeric_dirs(folder)) for folder in self.model_dirs if folder.is_dir()]
        return tuple(sorted(set.intersection(*found))) if found else ()

    @property
    def manifest(self) -> Path:
        return self.ensemble_dir / MANIFEST


def _numeric_dirs(folder: Path) -> list[int]:
    return [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0]


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


def step_models(
    name: str, checkpoint: Checkpoint, settings: TokenizerSettings, serving: ServingOptions
) -> tuple[PythonModel, PythonModel, PythonModel]:
    """The three python-backend step configs for ``checkpoint``'s task."""
    tokenizer_name, model_name, postprocess_name = contract.step_names(name)
    task = checkpoint.task
    width = checkpoint.hidden_size if task.name == "embeddings" else len(checkpoint.labels)
    token_tensors = tuple(int64(n) for n in checkpoint.input_names)
    truncated = Tensor(contract.OUTPUT_TRUNCATED, "TYPE_BOOL", (1,))
    model_output = Tensor(
        task.model_output, "TYPE_FP32", (-1, width) if task.model_output_has_sequence_axis else (width,)
    )
    mbs = serving.max_batch_size
    policy = serving.version_policy

    def warmup(inputs: tuple[Tensor, ...]) -> tuple[WarmupSample, ...]:
        return bucket_warmup(inputs, settings.buckets) if serving.warmup else ()

    text = Tensor(contract.INPUT_TEXT, "TYPE_STRING", (1,))
    tokenizer = PythonModel(
        name=tokenizer_name,
        inputs=(text,),
        outputs=(*token_tensors, truncated),
        max_batch_size=mbs,
        instance_count=serving.tokenizer_instances,
        parameters={"settings": settings.to_json(), "truncated_output": contract.OUTPUT_TRUNCATED},
        version_policy=policy,
        warmup=warmup((text,)),  # an empty text: loads the Rust tokenizer's first-call state
    )
    model = PythonModel(
        name=model_name,
        inputs=token_tensors,
        outputs=(model_output,),
        max_batch_size=mbs,
        instance_count=serving.model_instances,
        batching=Batching(max_queue_delay_us=serving.model_queue_delay_us),
        parameters={"onnx_file": "model.onnx", "intra_op_threads": str(serving.intra_op_threads)},
        version_policy=policy,
        warmup=warmup(token_tensors),
    )
    available = {model_output.name: model_output, "attention_mask": int64("attention_mask")}
    post_settings = {
        "pooling": checkpoint.pooling.mode,
        "normalize": checkpoint.pooling.normalize,
        "labels": list(checkpoint.labels),
        "multi_label": checkpoint.multi_label,
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
        parameters={"task": task.name, "settings": json.dumps(post_settings)},
        version_policy=policy,
        warmup=warmup(postprocess_inputs),
    )
    return tokenizer, model, postprocess


def ensemble_model(
    name: str, steps: tuple[PythonModel, PythonModel, PythonModel], checkpoint: Checkpoint, settings: TokenizerSettings
) -> Ensemble:
    """Tie the steps together; every tensor keeps its step-level name inside the ensemble."""
    tokenizer, model, postprocess = steps

    def identity(tensors):
        return {t.name: t.name for t in tensors}

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
        parameters={
            contract.PARAM_TASK: checkpoint.task.name,
            contract.PARAM_LABELS: json.dumps(list(checkpoint.labels)),
            contract.PARAM_MULTI_LABEL: json.dumps(checkpoint.multi_label),
            contract.PARAM_MAX_TEXT_BYTES: str(settings.max_text_bytes),
            contract.PARAM_MAX_SEQUENCE_LENGTH: str(settings.max_length),
        },
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
    existing = [d for d in layout.model_dirs if d.exists()]
    if not existing:
        return VersionPlan(requested or 1, True, "new model")
    if overwrite:
        return VersionPlan(requested or 1, True, "--overwrite: replacing every version")
    names = ", ".join(d.name for d in existing)
    versions = layout.versions()
    if len(existing) < len(layout.model_dirs) or not versions:
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
) -> RepositoryLayout:
    """Write version ``version`` (default: see :func:`plan_version`) of the four models of ``name``."""
    root = Path(root).resolve()
    steps = step_models(name, checkpoint, settings, serving)
    tokenizer, model, postprocess = steps
    ensemble = ensemble_model(name, steps, checkpoint, settings)
    configs = {c.name: c for c in (*map(build_python_model, steps), build_ensemble(ensemble))}
    plan = plan_version(RepositoryLayout(root, name), checkpoint.fingerprint, configs, version, overwrite)
    layout = RepositoryLayout(root, name, plan.version)
    log.info("%s: %s", name, plan.reason)
    layout.root.mkdir(parents=True, exist_ok=True)
    manifest = {**manifest, "version": plan.version}
    texts = {MANIFEST: json.dumps(manifest, indent=2) + "\n"}
    texts.update({f"{n}.json": json.dumps(r, indent=2) + "\n" for n, r in reports.items()})
    files: dict[str, dict[str, bytes | Path]] = {
        tokenizer.name: {"model.py": backend_source("tokenizer"), "tokenizer.json": tokenizer_json},
        model.name: {"model.py": backend_source("onnx_model"), "model.onnx": onnx_file},
        postprocess.name: {"model.py": backend_source("postprocess")},
        name: {n: t.encode() for n, t in texts.items()},
    }
    with tempfile.TemporaryDirectory(dir=layout.root.parent, prefix=f".{name}-staging-") as tmp:
        staging = Path(tmp)
        staged = {n: stage_model(staging, configs[n], plan.version, files[n]) for n in configs}
        for report_name, text in texts.items():  # the latest export's reports, beside config.pbtxt
            (staged[name] / report_name).write_text(text)
            (staged[name] / report_name).chmod(FILE_MODE)
        for folder in layout.model_dirs:  # steps first, the ensemble last
            if plan.replace_all:
                replace_dir(staged[folder.name], folder)
            else:
                install_version(staged[folder.name], folder, plan.version)
                for report_name in texts if folder.name == name else ():
                    os.replace(staged[name] / report_name, folder / report_name)
    log.info("wrote version %d of ensemble %s to %s", plan.version, name, layout.root)
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
