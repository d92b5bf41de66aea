"""Version planning: which version an export writes, and whether it may.

The models of an export always carry the same version numbers. Exporting into a repository
that already holds ``NAME``:

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
from dataclasses import dataclass

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from hf2triton.errors import RepositoryError
from hf2triton.repository.configs import parse_pbtxt
from hf2triton.repository.layout import CONFIG, MANIFEST, RepositoryLayout, numeric_dirs

# Config fields that may change between versions: they are about serving, not the model.
SERVING_FIELDS = ("instance_group", "dynamic_batching", "model_warmup", "version_policy")
SERVING_PARAMETERS = ("intra_op_threads", "max_batch_tokens", "lone_text_threads", "pack_tokens")


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
        path = layout.root / name / CONFIG
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
        previous = numeric_dirs(layout.ensemble_dir) if layout.ensemble_dir.is_dir() else []
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
