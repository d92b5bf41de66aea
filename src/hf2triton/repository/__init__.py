"""The Triton model repository of an export, one module per job:

- :mod:`~hf2triton.repository.configs`: model configs built as protobuf, to and from pbtxt;
- :mod:`~hf2triton.repository.layout`: serving options, naming of the ensemble, steps and
  variants, and which folder belongs to which model (collisions);
- :mod:`~hf2triton.repository.models`: the configs and files of every model of an export;
- :mod:`~hf2triton.repository.versions`: which version an export writes, and whether it may;
- :mod:`~hf2triton.repository.install`: staging, journaled crash-safe moves, recovery;
- :mod:`~hf2triton.repository.assembly`: :func:`write_repository` over a :class:`RepositorySpec`.

Names are re-exported here lazily, so that importing ``hf2triton.repository.layout`` (the CLI's
choices) does not load ONNX Runtime through the step code.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "assembly": ("RepositorySpec", "write_repository"),
    "configs": ("Batching", "Ensemble", "EnsembleStep", "PlatformModel", "PythonModel", "Tensor", "VersionPolicy",
                "WarmupSample", "build_ensemble", "build_platform_model", "build_python_model", "parse_pbtxt",
                "to_pbtxt"),
    "install": ("DIR_MODE", "FILE_MODE", "KILL_POINTS", "KILL_POINT_ENV", "recover_repository"),
    "layout": ("BACKENDS", "DEFAULT_LAYOUT", "LAYOUTS", "MANIFEST", "RepositoryLayout", "ServingOptions",
               "variant_ensemble", "variant_model"),
    "models": ("model_step_files", "repository_models"),
    "versions": ("VersionPlan", "plan_version"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
