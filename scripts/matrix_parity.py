"""The parity figures the README's support matrix quotes, recomputed.

Exports every supported model type × task from the same tiny checkpoints the matrix test
uses (``tests/checkpoints.py``, same max length) and prints, per task, the largest
max |ONNX − PyTorch| on real tokens and the worst task metric over all model types, then
one line per cell. Deterministic (seeded weights); no server needed.

    PYTHONPATH=src python scripts/matrix_parity.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the tiny checkpoints of the matrix test

import checkpoints  # noqa: E402
from test_matrix import MATRIX_MAX_LENGTH, TASKS  # noqa: E402

from hf2triton.export.checkpoint import SUPPORTED_MODEL_TYPES  # noqa: E402
from hf2triton.pipeline import ExportOptions, export_checkpoint  # noqa: E402


def tiny_checkpoint(folder: Path, model_type: str, task: str) -> Path:
    """As the ``tiny_checkpoint`` fixture builds it (tests/conftest.py)."""
    return checkpoints.tiny_encoder(folder / f"{model_type}-{task}", model_type, task)


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="hf2triton-matrix-") as tmp:
        work = Path(tmp)
        for model_type in SUPPORTED_MODEL_TYPES:
            for task in TASKS:
                source = tiny_checkpoint(work / "checkpoints", model_type, task)
                result = export_checkpoint(ExportOptions(
                    checkpoint=source, output_dir=work / "repository", name=f"m{len(rows)}",
                    max_length=MATRIX_MAX_LENGTH))
                rows.append((model_type, task, result.parity))
    print(f"{'task':<24} {'max |onnx - torch|':>19}  worst task metric")
    for task in TASKS:
        reports = [p for _, t, p in rows if t == task]
        worst = min(reports, key=lambda p: p.metric_value)
        print(f"{task:<24} {max(p.max_abs_diff for p in reports):>19.1e}  {worst.metric} {worst.metric_value:.6f}")
    print()
    for model_type, task, parity in rows:
        print(f"{model_type:<12} {task:<24} {parity.summary()}")


if __name__ == "__main__":
    main()
