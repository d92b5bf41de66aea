"""The Triton model repository: configs (protobuf), layout and naming, version planning,
crash-safe installation, and the assembly of an export (:func:`write_repository`)."""

from hf2triton.repository.assembly import RepositorySpec, write_repository
from hf2triton.repository.configs import (
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
from hf2triton.repository.install import DIR_MODE, FILE_MODE, KILL_POINT_ENV, KILL_POINTS, recover_repository
from hf2triton.repository.layout import (
    BACKENDS,
    DEFAULT_LAYOUT,
    LAYOUTS,
    MANIFEST,
    RepositoryLayout,
    ServingOptions,
    variant_ensemble,
    variant_model,
)
from hf2triton.repository.models import model_step_files, repository_models
from hf2triton.repository.versions import VersionPlan, plan_version

__all__ = [
    "BACKENDS", "DEFAULT_LAYOUT", "DIR_MODE", "FILE_MODE", "KILL_POINTS", "KILL_POINT_ENV", "LAYOUTS", "MANIFEST",
    "Batching", "Ensemble", "EnsembleStep", "PlatformModel", "PythonModel", "RepositoryLayout", "RepositorySpec",
    "ServingOptions", "Tensor", "VersionPlan", "VersionPolicy", "WarmupSample", "build_ensemble",
    "build_platform_model", "build_python_model", "model_step_files", "parse_pbtxt", "plan_version",
    "recover_repository", "repository_models", "to_pbtxt", "variant_ensemble", "variant_model", "write_repository",
]
