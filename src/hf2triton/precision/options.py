"""What the user chooses about precision variants, validated before any work starts.

A light module (no numpy, onnx or onnxruntime): the CLI builds its options from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hf2triton.errors import OptionsError

PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIBRATION_METHOD = "percentile"
# The accuracy guard: mean cosine (embeddings) or top-label agreement (classifiers) vs fp32.
DEFAULT_MIN_AGREEMENT = 0.99


def parse_precisions(text: str) -> tuple[str, ...]:
    """``"fp32,int8"`` → ``("fp32", "int8")``; blanks between commas are ignored."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def check_threshold(name: str, value: float) -> None:
    """A guard threshold must be a reachable, meaningful bar: 0 < value ≤ 1.

    Both metrics (mean cosine, label agreement) lie in [-1, 1] / [0, 1] and reach 1 only
    when the variant agrees exactly: 0 (or less) would turn the guard off, and anything
    above 1 would reject every variant, whatever its accuracy.
    """
    if not 0 < value <= 1:
        raise OptionsError(f"{name} must be in (0, 1] (0 turns the guard off, above 1 rejects everything), "
                           f"got {value}")


@dataclass(frozen=True)
class VariantOptions:
    precisions: tuple[str, ...] = ("fp32",)
    calibration_data: Path | None = None  # default: the calibration set shipped in the package
    calibration_column: str = "text"
    calibration_method: str = DEFAULT_CALIBRATION_METHOD
    min_cosine: float = DEFAULT_MIN_AGREEMENT
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    benchmark: bool = True
    select: bool = False

    def __post_init__(self):
        unknown = set(self.precisions) - set(PRECISIONS)
        if unknown or "fp32" not in self.precisions:
            raise OptionsError(f"--precision must include fp32 and only {', '.join(PRECISIONS)}; "
                               f"got {','.join(self.precisions) or 'nothing'}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise OptionsError(f"--calibration-method {self.calibration_method!r}: choose one of "
                               f"{', '.join(CALIBRATION_METHODS)}")
        check_threshold("--min-agreement", self.min_agreement)
        check_threshold("--min-agreement", self.min_cosine)  # the same option, for embeddings
        if self.calibration_data is not None and not Path(self.calibration_data).is_file():
            raise OptionsError(f"--calibration-data {self.calibration_data} is not a file")
