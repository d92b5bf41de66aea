"""What this machine offers TensorRT engines, detected once: GPUs, the TensorRT runtime,
and the Triton release the deployment is pinned to.

The builder needs a GPU and the ``tensorrt`` module; ``hf2triton check`` needs the
TensorRT version the server would load plans with (the Triton image has ``libnvinfer``
but no Python module) and every visible GPU. Both read the same facts from here.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from hf2triton.errors import MissingDependencyError

log = logging.getLogger(__name__)

BUILD_IN_CONTAINER = (
    "build engines inside the TensorRT container that matches the Triton image: "
    "`docker compose run --rm builder` (see README, 'Deploy on a GPU')"
)
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
# Where the pinned release is found, in order: the operator's variable, the NGC Triton
# container's own variable, then TRITON_VERSION in ./.env (what docker-compose.yml reads).
RELEASE_VARIABLES = ("TRITON_VERSION", "NVIDIA_TRITON_SERVER_VERSION")
RELEASE_ENV_FILE = Path(".env")
_LIBNVINFER = ("libnvinfer.so.10", "libnvinfer.so.11", "libnvinfer.so")


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # e.g. "8.9"


@dataclass(frozen=True)
class ServingEnvironment:
    """The TensorRT version and GPUs a server would load plans with (None / () when absent)."""

    tensorrt_version: str | None
    compute_capabilities: tuple[str, ...]
    gpu_names: tuple[str, ...] = ()


def pinned_release(env_file: Path = RELEASE_ENV_FILE) -> str | None:
    """The Triton release this deployment is pinned to, or None when nothing pins one."""
    for variable in RELEASE_VARIABLES:
        if os.environ.get(variable):
            return os.environ[variable]
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "TRITON_VERSION" and value.strip():
                return value.strip()
    return None


def import_tensorrt() -> ModuleType:
    try:
        import tensorrt  # noqa: PLC0415 (optional, GPU-only)
    except ImportError:
        raise MissingDependencyError(
            f"TensorRT is not installed here (it needs an NVIDIA GPU); {BUILD_IN_CONTAINER}"
        ) from None
    return tensorrt


def visible_gpus() -> list[GpuInfo]:
    """Every NVIDIA GPU nvidia-smi lists; [] when it is missing or fails."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        return []
    try:
        run = subprocess.run(
            [binary, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        )
    except (OSError, subprocess.SubprocessError) as error:
        log.warning("nvidia-smi failed: %s", error)
        return []
    rows = [line.rsplit(",", 1) for line in run.stdout.splitlines() if "," in line]
    return [GpuInfo(name.strip(), capability.strip()) for name, capability in rows]


def detect_gpu() -> GpuInfo:
    """The first GPU (nvidia-smi, else torch.cuda): the one the builder builds for."""
    gpus = visible_gpus()
    if gpus:
        return gpus[0]
    try:
        import torch  # noqa: PLC0415 (heavy; only when nvidia-smi is absent)

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return GpuInfo(torch.cuda.get_device_name(0), f"{major}.{minor}")
    except ImportError:
        pass
    raise MissingDependencyError(f"no NVIDIA GPU found (nvidia-smi and torch.cuda see none); {BUILD_IN_CONTAINER}")


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


def detect_environment() -> ServingEnvironment:
    """The TensorRT version and GPUs here; raises MissingDependencyError with what is missing."""
    gpus = visible_gpus()
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
    return ServingEnvironment(
        tensorrt_version, tuple(g.compute_capability for g in gpus), tuple(g.name for g in gpus)
    )
