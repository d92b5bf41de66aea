"""``hf2triton check``: are the TensorRT plans in a repository servable here?

Triton fails to load a plan built by another TensorRT version or for another GPU with an
opaque error. :func:`check_repository` reads every plan's :class:`~hf2triton.engines.record.PlanRecord`
(written by the builder) and compares it with the serving environment
(:func:`~hf2triton.engines.environment.detect_environment`) and with the pinned Triton
release, collecting every mismatch into one :class:`~hf2triton.errors.CompatibilityError`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hf2triton.engines.environment import RELEASE_TENSORRT, ServingEnvironment, detect_environment
from hf2triton.engines.record import PlanRecord, sidecar_path
from hf2triton.errors import CompatibilityError

# Re-exported: the repository writer and older callers import these names from here.
__all__ = ["CheckReport", "CheckedPlan", "RELEASE_TENSORRT", "ServingEnvironment", "check_repository",
           "detect_environment", "find_plans", "read_plan_records", "sidecar_path"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckedPlan:
    path: Path  # the plan file in the repository
    record: PlanRecord


@dataclass(frozen=True)
class CheckReport:
    plans: tuple[CheckedPlan, ...]
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


def read_plan_records(repository: Path) -> tuple[list[CheckedPlan], list[str]]:
    """Every ``*.plan`` under ``repository`` with its record; problems for missing or bad records."""
    plans, problems = [], []
    for plan in find_plans(repository):
        try:
            plans.append(CheckedPlan(plan, PlanRecord.read(plan)))
        except CompatibilityError as error:
            problems.append(f"{plan.relative_to(repository)}: {error}")
    return plans, problems


def plan_problems(
    plans: list[CheckedPlan], repository: Path, environment: ServingEnvironment | None, release: str | None
) -> list[str]:
    """Every mismatch between the plans, the environment and the pinned release."""
    problems = []
    expected = RELEASE_TENSORRT.get(release) if release else None
    for plan in plans:
        shown, record = plan.path.relative_to(repository), plan.record
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
        problems += coverage_problems(plans, repository, environment)
    return problems


def coverage_problems(plans: list[CheckedPlan], repository: Path, environment: ServingEnvironment) -> list[str]:
    """Each model folder needs a plan for every GPU compute capability present here."""
    by_model: dict[Path, set[str]] = {}
    for plan in plans:
        model_dir = plan.path.parent.parent  # <model>/<version>/<file>.plan
        by_model.setdefault(model_dir, set()).add(plan.record.compute_capability)
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
    plans, problems = read_plan_records(repository)
    if environment is not None and not environment.compute_capabilities and plans:
        problems.append("no GPU is visible here, and TensorRT plans run only on a GPU")
    problems += plan_problems(plans, repository, environment, release)
    if problems:
        raise CompatibilityError(
            f"{len(problems)} problem(s) with the TensorRT plans in {repository}; Triton would fail to load them:\n  "
            + "\n  ".join(problems)
        )
    return CheckReport(tuple(plans), environment, release)
