"""``hf2triton check``: are the TensorRT plans in a repository servable here?

A TensorRT plan only deserializes in the TensorRT version that built it, on a GPU of the
compute capability it was built for; otherwise Triton fails to load it with an opaque
error. The engine builder therefore records both in a JSON sidecar next to each plan,
``<plan file>.json`` (``model.plan`` → ``model.plan.json``)::

    {"tensorrt_version": "10.8.0.43", "compute_capability": "8.6",
     "triton_release": "25.01", "gpu_name": "NVIDIA A10G", ...}

(``tensorrt_version`` and ``compute_capability`` are required; other keys are kept as
notes). :func:`check_repository` compares every plan's record with the serving
environment (:func:`detect_environment`: TensorRT from its Python module or from
``libnvinfer``, GPUs from ``nvidia-smi``) and with the pinned Triton release, and
collects every mismatch into one :class:`~hf2triton.errors.CompatibilityError`.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hf2triton.errors import CompatibilityError, MissingDependencyError

log = logging.getLogger(__name__)

SIDECAR_SUFFIX = ".json"


def sidecar_path(plan: Path) -> Path:
    """Where a plan's build record lives: ``model.plan`` → ``model.plan.json``."""
    return plan.with_name(plan.name + SIDECAR_SUFFIX)
# TensorRT major.minor inside each NGC release (NVIDIA's frameworks support matrix). The
# tritonserver and tensorrt images of one release carry the same TensorRT.
RELEASE_TENSORRT = {
    "24.08": "10.3",
    "24.09": "10.4",
    "24.10": "10.5",
    "24.11": "10.6",
    "24.12": "10.7",
    "25.01": "10.8",
    "25.02": "10.8",
    "25.03": "10.9",
}
_LIBNVINFER = ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so")


@dataclass(frozen=True)
class PlanRecord:
    """What the engine builder recorded about one plan."""

    plan: Path
    tensorrt_version: str
    compute_capability: str
    triton_release: str | None = None


@dataclass(frozen=True)
class ServingEnvironment:
    """The TensorRT version and GPUs a server would load plans with (None / () when absent)."""

    tensorrt_version: str | None
    compute_capabilities: tuple[str, ...]
    gpu_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckReport:
    plans: tuple[PlanRecord, ...]
    environment: ServingEnvironment | None  # None: checked against the release only
    release: str | None

    def summary(self) -> str:
        where = (
            f"TensorRT {self.environment.tensorrt_version}, GPU compute capability "
            f"{', '.join(self.environment.compute_capabilities)}"
            if self.environment
            else "the pinned release only (no GPU check)"
        )
        release = f", release {self.release}" if self.release else ""
        return f"{len(self.plans)} TensorRT plan(s) are compatible with {where}{release}"


def major_minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def same_tensorrt(built: str, serving: str) -> bool:
    """Equal major.minor.patch (libnvinfer reports no build number; the module does)."""
    return built.split(".")[:3] == serving.split(".")[:3]


def find_plans(repository: Path) -> list[Path]:
    return sorted(Path(repository).rglob("*.plan"))


def read_plan_records(repository: Path) -> tuple[list[PlanRecord], list[str]]:
    """Every ``*.plan`` under ``repository`` with its sidecar; problems for missing or bad sidecars."""
    records, problems = [], []
    for plan in find_plans(repository):
        sidecar = sidecar_path(plan)
        shown = plan.relative_to(repository)
        try:
            raw = json.loads(sidecar.read_text())
            records.append(
                PlanRecord(plan, str(raw["tensorrt_version"]), str(raw["compute_capability"]), raw.get("triton_release"))
            )
        except FileNotFoundError:
            problems.append(f"{shown}: no {sidecar.name} records the TensorRT version and GPU it was built for; "
                            "rebuild it with `docker compose run --rm builder`")
        except (ValueError, KeyError, TypeError) as error:
            problems.append(f"{shown}: {sidecar.name} is unreadable or lacks tensorrt_version/compute_capability "
                            f"({error.__class__.__name__}: {error})")
    return records, problems


def plan_problems(
    records: list[PlanRecord], repository: Path, environment: ServingEnvironment | None, release: str | None
) -> list[str]:
    """Every mismatch between the plans, the environment and the pinned release."""
    problems = []
    expected = RELEASE_TENSORRT.get(release) if release else None
    for record in records:
        shown = record.plan.relative_to(repository)
        if expected and major_minor(record.tensorrt_version) != expected:
            problems.append(f"{shown}: built with TensorRT {record.tensorrt_version}, but release {release} "
                            f"(TRITON_VERSION) serves TensorRT {expected}")
        if release and record.triton_release and record.triton_release != release:
            problems.append(f"{shown}: built for release {record.triton_release}, but the pinned release is {release}")
        if environment is None:
            continue
        if environment.tensorrt_version and not same_tensorrt(record.tensorrt_version, environment.tensorrt_version):
            problems.append(f"{shown}: built with TensorRT {record.tensorrt_version}, but this environment has "
                            f"TensorRT {environment.tensorrt_version}")
    if environment is not None:
        problems += coverage_problems(records, repository, environment)
    return problems


def coverage_problems(records: list[PlanRecord], repository: Path, environment: ServingEnvironment) -> list[str]:
    """Each model folder needs a plan for every GPU compute capability present here."""
    by_model: dict[Path, set[str]] = {}
    for record in records:
        model_dir = record.plan.parent.parent  # <model>/<version>/<file>.plan
        by_model.setdefault(model_dir, set()).add(record.compute_capability)
    problems = []
    for model_dir, built in sorted(by_model.items()):
        missing = sorted(set(environment.compute_capabilities) - built)
        if missing:
            problems.append(f"{model_dir.relative_to(repository)}: plans built for compute capability "
                            f"{', '.join(sorted(built))}, but this machine's GPU(s) are {', '.join(missing)}; "
                            "build the engines on this GPU model")
    return problems


def check_repository(
    repository: Path, environment: ServingEnvironment | None, release: str | None = None
) -> CheckReport:
    """Raise CompatibilityError listing every problem, or return what was checked.

    ``environment=None`` checks the plans against ``release`` only (no GPU here).
    """
    repository = Path(repository)
    if not repository.is_dir():
        raise CompatibilityError(f"model repository {repository} does not exist")
    if release and release not in RELEASE_TENSORRT:
        log.warning("release %s is not in hf2triton's release table; its TensorRT version is not checked", release)
    records, problems = read_plan_records(repository)
    if environment is not None and not environment.compute_capabilities and records:
        problems.append("no GPU is visible here, and TensorRT plans run only on a GPU")
    problems += plan_problems(records, repository, environment, release)
    if problems:
        raise CompatibilityError(
            f"{len(problems)} problem(s) with the TensorRT plans in {repository}; Triton would fail to load them:\n  "
            + "\n  ".join(problems)
        )
    return CheckReport(tuple(records), environment, release)


def detect_environment() -> ServingEnvironment:
    """The TensorRT version and GPUs here; raises MissingDependencyError with what is missing."""
    gpus = gpu_compute_capabilities()
    tensorrt_version = tensorrt_runtime_version()
    missing = []
    if not gpus:
        missing.append("no NVIDIA GPU is visible (nvidia-smi is missing or lists none)")
    if tensorrt_version is None:
        missing.append("no TensorRT runtime (neither the tensorrt module nor libnvinfer) is installed")
    if missing:
        raise MissingDependencyError(
            "cannot check the plans against this machine: " + "; ".join(missing) + ". Run `hf2triton check` "
            "inside the triton or builder container on the GPU host (docker compose run --rm builder runs it), "
            "or pass --offline to check the plans against the pinned release only"
        )
    return ServingEnvironment(tensorrt_version, tuple(cc for cc, _ in gpus), tuple(name for _, name in gpus))


def gpu_compute_capabilities() -> list[tuple[str, str]]:
    """(compute capability, name) of each visible NVIDIA GPU, from nvidia-smi; [] when none."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        run = subprocess.run(
            [binary, "--query-gpu=compute_cap,name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        )
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("nvidia-smi failed: %s", error)
        return []
    rows = [line.split(",", 1) for line in run.stdout.splitlines() if line.strip()]
    return [(cc.strip(), name.strip()) for cc, name in rows]


def tensorrt_runtime_version() -> str | None:
    """TensorRT's version from its Python module, else from libnvinfer (the Triton image has no module)."""
    try:
        import tensorrt  # noqa: PLC0415 (optional, GPU-only)

        return str(tensorrt.__version__)
    except ImportError:
        pass
    for name in _LIBNVINFER:
        try:
            number = int(ctypes.CDLL(name).getInferLibVersion())
        except (OSError, AttributeError):
            continue
        major, minor, patch = number // 10000, number // 100 % 100, number % 100
        if major < 10:  # TensorRT 8/9 encoded major*1000 + minor*100 + patch
            major, minor, patch = number // 1000, number // 100 % 10, number % 100
        return f"{major}.{minor}.{patch}"
    return os.environ.get("TRT_VERSION") or os.environ.get("TENSORRT_VERSION") or None
