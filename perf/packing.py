"""Packed rows against the padded plan, in process: what each costs per text, side by side.

    PYTHONPATH=src python perf/packing.py [REPOSITORY/NAME] [--seconds 3] [--sizes 1 2 4 8 16 32 64]

A fused model (fp32, any task) holds two graphs of the same weights: ``model.onnx`` (padded
rows, one text each) and ``model.packed.onnx`` (several texts per row). For each size k,
random draws of k texts (the benchmark's 600 sentences, or the shipped corpus) run
through the served pipeline (``fused.run_texts``: tokenize, plan, ONNX Runtime on one
thread, pool) on each graph in turn, two rounds: the padded plan (texts sorted by
length, cut into sub-batches where padding costs more than a call) against the packed
plan (``batching.pack_call``: packed rows where they cost less). Prints CPU ms per
text and packed ÷ padded; k around 2-16 is what an instance gets per execution at
concurrency 16 with one text per request. The length-sorted batch-32 figure of the
same padded graph (the benchmark's ceiling) is printed beside them.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "perf"))

from bench_texts import cached_or_corpus  # noqa: E402

from hf2triton.backends import batching, fused, onnx_model, tokenizer  # noqa: E402
from hf2triton.cpu import cpu_flags  # noqa: E402
from hf2triton.repository import parse_pbtxt  # noqa: E402
from hf2triton.repository.layout import DEFAULT_PACK_TOKENS  # noqa: E402

PEERS_DIR = REPO / "perf" / ".peers"
Pipeline = Callable[[list[str]], dict]


def exported_fused(work: Path) -> Path:
    from hf2triton.pipeline import ExportOptions, export_checkpoint
    from hf2triton.repository import ServingOptions

    export_checkpoint(ExportOptions(output_dir=work, name="packing", serving=ServingOptions(layout="fused")))
    return work / "packing"


def pipelines(model_dir: Path) -> dict[str, Pipeline]:
    """The fused model's pipeline on one thread: padded graph and plan, packed graph and plan."""
    config = parse_pbtxt((model_dir / "config.pbtxt").read_text())
    settings = tokenizer.TokenizerSettings.from_json(config.parameters["settings"].string_value)
    answer = fused.AnswerSettings.from_json(config.parameters["answer"].string_value)
    pack_tokens = int(config.parameters["pack_tokens"].string_value) or DEFAULT_PACK_TOKENS
    version = model_dir / "1"
    encoder = tokenizer.load_tokenizer(version / "tokenizer.json", settings.max_length)
    padded = onnx_model.create_session(version / "model.onnx", 1, spinning=False)
    packed = onnx_model.create_session(version / onnx_model.PACKED_FILE, 1, spinning=False)

    def run(session, rows: int) -> Pipeline:
        return lambda texts: fused.run_texts(session, settings, answer, texts, encoder,
                                             max_batch_tokens=8192, packed_rows=rows)

    return {"padded": run(padded, 0), "packed": run(packed, pack_tokens)}


def cpu_ms_per_text(pipeline: Pipeline, draws: list[list[str]]) -> float:
    started = time.process_time()
    for texts in draws:
        pipeline(texts)
    return 1000 * (time.process_time() - started) / sum(len(texts) for texts in draws)


def draws_for(texts: list[str], size: int, seconds: float, rng: random.Random) -> list[list[str]]:
    """Enough random draws of ``size`` texts for about ``seconds`` (at ~8 ms per text)."""
    return [rng.sample(texts, size) for _ in range(max(1, int(seconds / 0.008 / size)))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, help="a fused model folder with a packed graph "
                        "(default: export the default model)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per cell and round (default: 3)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    args = parser.parse_args(argv)
    print("CPU flags:", " ".join(cpu_flags()) or "unknown")
    with tempfile.TemporaryDirectory() as work:
        model_dir = args.model or exported_fused(Path(work))
        if not (model_dir / "1" / onnx_model.PACKED_FILE).is_file():
            print(f"{model_dir} has no packed graph (an fp32 model exported in the fused layout has one)")
            return 2
        run = pipelines(model_dir)
        texts = cached_or_corpus(PEERS_DIR / "texts")
        rng = random.Random(0)
        ordered = sorted(texts, key=len)
        ceiling = [ordered[i : i + 32] for i in range(0, len(ordered), 32)]
        print(f"{len(texts)} texts; CPU ms per text, one thread, whole pipeline, two rounds")
        print(f"length-sorted batches of 32 on the padded graph: "
              f"{min(cpu_ms_per_text(run['padded'], ceiling) for _ in range(2)):.2f}")
        for size in args.sizes:
            draws = draws_for(texts, size, args.seconds, rng)
            cells = {name: [] for name in run}
            for _ in range(2):
                for name, pipeline in run.items():
                    cells[name].append(cpu_ms_per_text(pipeline, draws))
            padded, packed = min(cells["padded"]), min(cells["packed"])
            print(f"{size:3} random texts per call: padded {padded:5.2f}  packed {packed:5.2f}  "
                  f"packed ÷ padded {packed / padded:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
