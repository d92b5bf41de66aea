"""The tritonserver bundled in the ``nvidia-pytriton`` wheel: where its files are, the
``--backend-directory`` it needs, and the environment its python-backend stubs need.

The PyPI wheel ``nvidia-pytriton==0.7.0`` ships Triton 2.51 with the python backend
only (no onnxruntime or tensorrt backend), runnable on CPU without Docker. Each point
below was checked against the real binary:

- ``--backend-directory`` is a folder this module builds and caches under
  ``$XDG_CACHE_HOME/hf2triton/backends/<wheel version>-py<X.Y>/`` (default
  ``~/.cache``; a temporary folder when that is not writable). It holds ``python/``
  with the wheel's ``libtriton_python.so``, ``triton_python_backend_utils.py`` and the
  stub built for the running Python. The copied stub loses its ``$ORIGIN`` RPATH, so the
  wheel's ``nvidia_pytriton.libs/`` goes on ``LD_LIBRARY_PATH``.
- The stub embeds ``libpython3.X.so.1.0`` and finds its ``sys.prefix`` through
  ``python3`` on ``PATH``. The running interpreter's ``bin/`` goes first on ``PATH``
  (without it the stubs use the system Python and fail with ``No module named
  'numpy'``) and its ``LIBDIR`` first on ``LD_LIBRARY_PATH`` (without it a pyenv or
  other non-system interpreter gets the *system* libpython of the same minor version).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hf2triton.errors import MissingDependencyError

__all__ = [
    "PYTRITON_DISTRIBUTION",
    "PYTRITON_REQUIREMENT",
    "TritonDistribution",
    "find_bundled_tritonserver",
    "prepare_backend_directory",
    "server_environment",
]

logger = logging.getLogger(__name__)

PYTRITON_DISTRIBUTION = "nvidia-pytriton"
PYTRITON_REQUIREMENT = "nvidia-pytriton==0.7.0"
_BACKEND_FILES = ("libtriton_python.so", "triton_python_backend_utils.py", "triton_python_backend_stub")


@dataclass(frozen=True)
class TritonDistribution:
    """Where the tritonserver files of the ``nvidia-pytriton`` wheel are."""

    server_binary: Path
    python_backend_lib: Path
    python_backend_utils: Path
    stub: Path
    library_dirs: tuple[Path, ...]
    version: str = "unknown"  # the wheel's version; keys the backend-directory cache


def _python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def find_bundled_tritonserver() -> TritonDistribution:
    """Locate the tritonserver bundled in the installed ``nvidia-pytriton`` wheel.

    Raises MissingDependencyError when the wheel is absent, incomplete, or has no
    python-backend stub for the running Python version.
    """
    spec = importlib.util.find_spec("pytriton")  # does not import (run) the package
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            f"the bundled tritonserver comes with the {PYTRITON_DISTRIBUTION} wheel, which is not installed; "
            f"install it with `pip install {PYTRITON_REQUIREMENT}` (Linux x86_64/aarch64)"
        )
    package_dir = Path(spec.origin).resolve().parent
    root = package_dir / "tritonserver"
    stubs_dir = root / "python_backend_stubs"
    candidates = list(stubs_dir.iterdir()) if stubs_dir.is_dir() else []
    stub_dirs = [d for d in candidates if (d / "triton_python_backend_stub").is_file()]
    available = sorted((p.name for p in stub_dirs), key=lambda v: tuple(int(x) for x in v.split(".") if x.isdigit()))
    distribution = TritonDistribution(
        server_binary=root / "bin" / "tritonserver",
        python_backend_lib=root / "backends" / "python" / "libtriton_python.so",
        python_backend_utils=root / "backends" / "python" / "triton_python_backend_utils.py",
        stub=stubs_dir / _python_tag() / "triton_python_backend_stub",
        library_dirs=tuple(
            p for p in (package_dir.parent / "nvidia_pytriton.libs", root / "external_libs") if p.is_dir()
        ),
        version=_wheel_version(),
    )
    missing = [
        str(p)
        for p in (distribution.server_binary, distribution.python_backend_lib, distribution.python_backend_utils)
        if not p.is_file()
    ]
    if missing:
        raise MissingDependencyError(
            f"the {PYTRITON_DISTRIBUTION} installation at {package_dir} has no bundled tritonserver "
            f"(missing: {', '.join(missing)}); reinstall it with `pip install --force-reinstall {PYTRITON_REQUIREMENT}`"
        )
    if not distribution.stub.is_file():
        raise MissingDependencyError(
            f"the bundled tritonserver has no python-backend stub for Python {_python_tag()}; "
            f"it has stubs for Python {', '.join(available) or 'none'}. Use one of those Pythons "
            f"with `pip install {PYTRITON_REQUIREMENT}`"
        )
    return distribution


def _wheel_version() -> str:
    try:
        return importlib.metadata.version(PYTRITON_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "hf2triton" / "backends"


def _backend_is_complete(backend_dir: Path, distribution: TritonDistribution) -> bool:
    sources = (distribution.python_backend_lib, distribution.python_backend_utils, distribution.stub)
    for name, source in zip(_BACKEND_FILES, sources):
        target = backend_dir / "python" / name
        if not target.is_file() or target.stat().st_size != source.stat().st_size:
            return False
    return os.access(backend_dir / "python" / "triton_python_backend_stub", os.X_OK)


def _fill_backend_directory(backend_dir: Path, distribution: TritonDistribution) -> None:
    python_dir = backend_dir / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    sources = (distribution.python_backend_lib, distribution.python_backend_utils, distribution.stub)
    for name, source in zip(_BACKEND_FILES, sources):
        shutil.copy2(source, python_dir / name)
    (python_dir / "triton_python_backend_stub").chmod(0o755)


def prepare_backend_directory(distribution: TritonDistribution, cache_root: Path | None = None) -> Path:
    """Return a ``--backend-directory`` holding ``python/`` for the running Python.

    Built once under ``cache_root`` (default ``~/.cache/hf2triton/backends``) in a
    folder named after the wheel version and Python version, and rebuilt when a file is
    missing or differs in size. Built in a sibling temporary folder and renamed into
    place, so concurrent servers never see a half-copied backend. Falls back to a fresh
    temporary folder when the cache is not writable.
    """
    root = cache_root if cache_root is not None else _default_cache_root()
    target = root / f"{distribution.version}-py{_python_tag()}"
    if _backend_is_complete(target, distribution):
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
        _fill_backend_directory(staging, distribution)
        if target.exists():
            logger.info("rebuilding incomplete python-backend directory %s", target)
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:  # another process renamed its copy first
            shutil.rmtree(staging, ignore_errors=True)
        if _backend_is_complete(target, distribution):
            return target
    except OSError as error:
        logger.warning("cannot cache the python backend under %s (%s); using a temporary folder", root, error)
    fallback = Path(tempfile.mkdtemp(prefix="hf2triton-backends-"))
    _fill_backend_directory(fallback, distribution)
    return fallback


def server_environment(distribution: TritonDistribution, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver and its python-backend stubs need.

    Puts the running interpreter's ``bin/`` first on ``PATH`` (stubs import the venv's
    packages) and its ``LIBDIR`` then the wheel's library folders on
    ``LD_LIBRARY_PATH`` (stubs load the running interpreter's libpython).
    """
    env = dict(os.environ if base is None else base)
    library_dirs = [str(p) for p in distribution.library_dirs]
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")
    if libdir and soname and (Path(libdir) / soname).is_file():
        library_dirs.insert(0, libdir)
    if env.get("LD_LIBRARY_PATH"):
        library_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(library_dirs)
    python_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([python_bin, env["PATH"]]) if env.get("PATH") else python_bin
    return env
