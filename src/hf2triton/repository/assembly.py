"""Write an export into a Triton model repository: ensemble ``NAME`` = tokenizer → model →
postprocess, or (``layout="fused"``) one python-backend model ``NAME`` doing all three;
``layout="auto"`` (the default) picks fused where it can (:func:`choose_layout`). Both
keep the client contract of :mod:`hf2triton.contract`. Precision variants are served beside
``NAME`` as ensembles ``NAME_<variant>`` sharing its tokenizer and postprocess steps.

The repository is self-contained and relocatable: step code (``model.py``), the ONNX
file, tokenizer.json, labels and settings are copied in; nothing points back to the
checkpoint. Which version is written follows :mod:`hf2triton.repository.versions`; how
it is moved in, crash-safely, :mod:`hf2triton.repository.install`. Files are written
0644 and folders 0755 whatever the umask: nobody else can change what the server loads.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as pb

from hf2triton.backends.postprocess import EntitySettings
from hf2triton.backends.tokenizer import TextOptions, TokenizerSettings
from hf2triton.errors import RepositoryError
from hf2triton.export.checkpoint import Checkpoint
from hf2triton.repository.configs import to_pbtxt
from hf2triton.repository.install import (
    FILE_MODE,
    STAGED,
    Change,
    crash_point,
    install,
    prepare_root,
    recover_locked,
    repository_lock,
    restrict_permissions,
    start_work,
)
from hf2triton.repository.layout import (
    CONFIG,
    MANIFEST,
    RepositoryLayout,
    ServingOptions,
    Survey,
    owned_folders,
    refuse_collisions,
    survey,
)
from hf2triton.repository.models import repository_models
from hf2triton.repository.versions import VersionPlan, plan_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RepositorySpec:
    """Everything one export writes into ``root`` as the model ``name``.

    ``onnx_file`` is what ``NAME`` serves. In the ensemble layout each of ``variants``
    (name → ONNX file) gets its own ensemble ``NAME_<variant>`` sharing the tokenizer and
    postprocess steps; with the tensorrt backend ``plans`` maps GPU compute capability →
    engine file for the model step. ``manifest`` and ``reports`` (name → JSON object) are
    written into ``NAME``.
    """

    root: Path
    name: str
    checkpoint: Checkpoint
    onnx_file: Path
    tokenizer_json: Path
    settings: TokenizerSettings
    serving: ServingOptions = ServingOptions()
    manifest: dict = field(default_factory=dict)
    reports: dict[str, dict] = field(default_factory=dict)
    overwrite: bool = False  # replace every version of NAME (and its stale variants)
    version: int | None = None  # None: see hf2triton.repository.versions.plan_version
    variants: dict[str, Path] = field(default_factory=dict)
    plans: dict[str, Path] = field(default_factory=dict)
    entities: EntitySettings | None = None
    text: TextOptions = TextOptions()  # long-text windows and prompts
    packed_onnx_file: Path | None = None  # the packed graph NAME serves (hf2triton.export.packing), if any

    def served_variants(self) -> dict[str, Path]:
        if self.serving.layout != "fused":
            return dict(self.variants)
        if self.entities is not None:
            raise RepositoryError("token classification needs the ensemble layout (--layout ensemble)")
        if self.variants:
            log.warning("the fused layout serves one variant; %s not written", ", ".join(self.variants))
        return {}


def choose_layout(spec: RepositorySpec) -> tuple[str, str]:
    """The layout ``layout="auto"`` writes, and why.

    Fused where it can serve the export: one python model instead of three steps, measured
    2-21 % more texts/s at c1/c16/c64 and 0.4-1.4 ms less at c1 on the bundled CPU server
    (``perf/bench.py``, README Performance). The ensemble where fused cannot: the container's native model
    steps, token classification, long-text windows, several variants side by side, or a
    model already in the repository as an ensemble (its versions continue).
    """
    if spec.serving.backend != "python-ort":
        return "ensemble", f"the {spec.serving.backend} backend's model step runs in an ensemble"
    if spec.entities is not None:
        return "ensemble", "token classification groups entities in the postprocess step"
    if spec.text.windowed:
        return "ensemble", "long-text windows are merged by the postprocess step"
    if spec.variants or spec.plans:
        return "ensemble", "several variants are served side by side"
    ensemble = RepositoryLayout(Path(spec.root), spec.name, kind="ensemble")
    if not spec.overwrite and all(folder.is_dir() for folder in ensemble.core_dirs):
        return "ensemble", f"{spec.name} is already in the repository as an ensemble"
    return "fused", "one python model serves the whole pipeline"


def resolved(spec: RepositorySpec) -> RepositorySpec:
    """``spec`` with ``layout="auto"`` replaced by the layout it stands for."""
    if spec.serving.layout != "auto":
        return spec
    layout, why = choose_layout(spec)
    log.info("layout %s: %s (pass --layout to choose)", layout, why)
    return replace(spec, serving=replace(spec.serving, layout=layout))


def write_repository(spec: RepositorySpec) -> RepositoryLayout:
    """Write version ``spec.version`` (default: the planned one) of every model of ``spec.name``."""
    spec = resolved(spec)
    variants = spec.served_variants()
    models = repository_models(spec.name, spec.checkpoint, spec.onnx_file, spec.tokenizer_json, spec.settings,
                               spec.serving, spec.entities, variants, spec.plans, spec.text,
                               spec.packed_onnx_file)
    root = prepare_root(spec.root)
    planned = RepositoryLayout(root, spec.name, kind=spec.serving.layout, variants=tuple(variants))
    with repository_lock(root):
        recover_locked(root)  # a killed export's leftovers, before anything is judged
        found = survey(root)
        refuse_collisions(found, spec.name, tuple(d.name for d in planned.model_dirs))
        core = {d.name: models[d.name][0] for d in planned.core_dirs}
        plan = plan_version(planned, spec.checkpoint.fingerprint, core, spec.version, spec.overwrite)
        layout = replace(planned, version=plan.version)
        log.info("%s: %s", spec.name, plan.reason)
        texts = report_texts(spec, plan.version)
        work = start_work(root)
        try:
            stage_all(work / STAGED, spec.name, models, plan.version, texts)
            install(root, work, changes(layout, plan, found, texts))
        except BaseException:  # an error, not a kill: undo now rather than at the next export
            recover_locked(root)
            raise
    log.info("wrote version %d of %s %s to %s", plan.version, layout.kind, spec.name, layout.root)
    return layout


def report_texts(spec: RepositorySpec, version: int) -> dict[str, str]:
    """The manifest and reports, by file name: in ``NAME/<version>/`` and, for the latest export, ``NAME/``."""
    texts = {MANIFEST: json.dumps({**spec.manifest, "version": version}, indent=2) + "\n"}
    texts.update({f"{n}.json": json.dumps(r, indent=2) + "\n" for n, r in spec.reports.items()})
    return texts


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
    (folder / CONFIG).write_text(to_pbtxt(config))
    restrict_permissions(folder)
    return folder


def stage_all(staging: Path, name: str, models: dict[str, tuple[pb.ModelConfig, dict]], version: int,
              texts: dict[str, str]) -> None:
    for index, (model, (config, files)) in enumerate(models.items()):
        if model == name:
            files = {**files, **{n: t.encode() for n, t in texts.items()}}
        folder = stage_model(staging, config, version, files)
        if model == name:  # the latest export's reports, beside config.pbtxt
            for report_name, text in texts.items():
                (folder / report_name).write_text(text)
                (folder / report_name).chmod(FILE_MODE)
        if index == 0:
            crash_point("staging")


def changes(layout: RepositoryLayout, plan: VersionPlan, found: Survey, texts: dict[str, str]) -> list[Change]:
    """The installation, in order: steps and variants first, ``NAME`` last, then what no longer belongs.

    A new model (or ``--overwrite``, or a layout switch) replaces whole folders and removes
    the steps and variants of the old one that this export does not write; otherwise the
    version folder and config.pbtxt of each existing model are replaced.
    """
    name = layout.name
    ordered = [d.name for d in layout.model_dirs if d.name != name] + [name]
    result = []
    for model in ordered:
        if plan.replace_all or model not in found.folders:
            result.append(Change(model, f"{STAGED}/{model}"))
            continue
        extras = list(texts) if model == name else []
        for item in (str(plan.version), CONFIG, *extras):
            result.append(Change(f"{model}/{item}", f"{STAGED}/{model}/{item}"))
    if plan.replace_all:
        stale = sorted(owned_folders(found, name) - set(ordered))
        result.extend(Change(folder, None) for folder in stale)
    return result
