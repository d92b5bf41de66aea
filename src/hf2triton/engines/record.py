"""The one record of a TensorRT plan: written by the builder, read by ``hf2triton check``.

A plan only deserializes in the TensorRT version that built it, on a GPU of the compute
capability it was built for, and is meant for one Triton release. The builder records all
three in a JSON sidecar next to the plan, ``<plan file>.json`` (``model.plan`` →
``model.plan.json``)::

    {"plan_file": "model.plan", "tensorrt_version": "10.8.0.43", "compute_capability": "8.6",
     "gpu_name": "NVIDIA A10G", "precision": "int8", "triton_release": "25.01", "profiles": [...]}

``tensorrt_version`` and ``compute_capability`` are required to read a record; the rest
may be absent in records written by older builders.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hf2triton.errors import CompatibilityError

SIDECAR_SUFFIX = ".json"


def sidecar_path(plan: Path) -> Path:
    """Where a plan's record lives: ``model.plan`` → ``model.plan.json``."""
    return plan.with_name(plan.name + SIDECAR_SUFFIX)


@dataclass(frozen=True)
class PlanRecord:
    """What the engine builder recorded about one plan."""

    plan_file: str  # the plan's file name, beside its record
    tensorrt_version: str
    compute_capability: str
    gpu_name: str = ""
    precision: str = ""  # "fp16" or "int8": what the ONNX graph carried
    triton_release: str | None = None  # the release the builder was pinned to (None: none pinned)
    profiles: tuple[dict, ...] = field(default=())

    def write(self, plan: Path) -> Path:
        """Write this record next to ``plan``; returns the sidecar's path."""
        sidecar = sidecar_path(plan)
        sidecar.write_text(json.dumps(asdict(self) | {"profiles": list(self.profiles)}, indent=2) + "\n")
        return sidecar

    @classmethod
    def read(cls, plan: Path) -> "PlanRecord":
        """The record next to ``plan``; CompatibilityError when it is missing or unreadable."""
        sidecar = sidecar_path(plan)
        try:
            raw = json.loads(sidecar.read_text())
            return cls(
                plan_file=str(raw.get("plan_file", plan.name)),
                tensorrt_version=str(raw["tensorrt_version"]),
                compute_capability=str(raw["compute_capability"]),
                gpu_name=str(raw.get("gpu_name", "")),
                precision=str(raw.get("precision", "")),
                triton_release=raw.get("triton_release"),
                profiles=tuple(raw.get("profiles", ())),
            )
        except FileNotFoundError:
            raise CompatibilityError(
                f"no {sidecar.name} records the TensorRT version and GPU it was built for; "
                "rebuild it with `docker compose run --rm builder`"
            ) from None
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise CompatibilityError(
                f"{sidecar.name} is unreadable or lacks tensorrt_version/compute_capability "
                f"({error.__class__.__name__}: {error})"
            ) from None
