"""What one ONNX Runtime call costs compared with one position: the model step's batch planner's constant.

    PYTHONPATH=src python perf/batch_cost.py [REPOSITORY/NAME_model/1/model.onnx]

Times the served ONNX file (default: the default model exported to a temporary
repository) on batches of rows × width for one and two threads and fits
``time = call + position × rows × width + attention × rows × width²`` by least squares
on relative error (small calls matter as much as big ones). ``call / position`` is how
many padded positions one more call is worth: ``batching.CALL_COST_POSITIONS``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hf2triton.backends import batching, onnx_model  # noqa: E402
from hf2triton.cpu import cpu_flags  # noqa: E402

ROWS = (1, 2, 4, 8, 16, 32)
WIDTHS = (8, 16, 32, 64)


def call_ms(session, names: list[str], rows: int, width: int, repeats: int) -> float:
    ids = np.full((rows, width), 1000, dtype=np.int64)
    arrays = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    feed = {name: arrays[name] for name in names}
    session.run(None, feed)  # warm-up
    began = time.perf_counter()
    for _ in range(repeats):
        session.run(None, feed)
    return (time.perf_counter() - began) / repeats * 1000


def fit(model: Path, threads: int) -> tuple[float, float]:
    """(ms per call, ms per position), fitted over ROWS × WIDTHS."""
    session = onnx_model.create_session(model, threads)
    names = [tensor.name for tensor in session.get_inputs()]
    terms, times = [], []
    for rows in ROWS:
        for width in WIDTHS:
            terms.append((1.0, rows * width, rows * width * width))
            times.append(call_ms(session, names, rows, width, repeats=max(3, 2000 // (rows * width))))
    weights = 1 / np.array(times)  # relative error
    solution, *_ = np.linalg.lstsq(np.array(terms) * weights[:, None], np.array(times) * weights, rcond=None)
    return float(solution[0]), float(solution[1])


def exported_model(work: Path) -> Path:
    from hf2triton.pipeline import ExportOptions, export_checkpoint
    from hf2triton.repository import ServingOptions

    export_checkpoint(ExportOptions(output_dir=work, name="cost", serving=ServingOptions(layout="ensemble")))
    return work / "cost_model" / "1" / "model.onnx"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, help="an ONNX file (default: export the default model)")
    args = parser.parse_args(argv)
    print("CPU flags:", " ".join(cpu_flags()) or "unknown")
    with tempfile.TemporaryDirectory() as work:
        model = args.model or exported_model(Path(work))
        for threads in (1, 2):
            call, position = fit(model, threads)
            print(f"{threads} thread(s): {call:.2f} ms per call + {position:.3f} ms per position "
                  f"-> one call = {call / position:.0f} positions "
                  f"(the planner uses {batching.CALL_COST_POSITIONS})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
