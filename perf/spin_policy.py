"""One text through the served pipeline on two threads, per ONNX Runtime spinning policy.

    PYTHONPATH=src python perf/spin_policy.py [REPOSITORY/NAME_model/1/model.onnx]

A lone text runs on a session with every core (``--lone-text-threads``). How its idle
threads wait between operators decides its latency and what it leaves to the tokenizer,
Triton and the other instances: ONNX Runtime's default spins while idle, ``none`` sleeps
at once, ``brief`` (what served sessions use: ``create_session(spinning=False)``) spins
at most ``onnx_model.SERVED_SPIN_US`` µs and stops when a run ends. Each policy runs
all the texts on a session of its own (closed afterwards: spinning threads of one policy
would take the cores of the next), two rounds in turn, with a 2 ms pause between texts as
between served requests; prints p50 latency and CPU time per text.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "perf"))

from batch_cost import exported_model  # noqa: E402
from bench_ceiling import EMBEDDING_ANSWER, served_tokenizer  # noqa: E402

from hf2triton.backends import fused, onnx_model  # noqa: E402
from hf2triton.cpu import cpu_flags  # noqa: E402
from hf2triton.perf.corpus import load_texts  # noqa: E402


def policies(model: Path, threads: int) -> dict[str, Callable[[], ort.InferenceSession]]:
    def never() -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"],
                                    disabled_optimizers=list(onnx_model.DISABLED_OPTIMIZERS))

    return {
        "default (spin while idle)": lambda: onnx_model.create_session(model, threads, spinning=True),
        "none": never,
        f"brief ({onnx_model.SERVED_SPIN_US} µs, served)": lambda: onnx_model.create_session(model, threads,
                                                                                            spinning=False),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, help="a model step's ONNX file (default: export the default model)")
    parser.add_argument("--texts", type=int, default=600, help="texts per policy (default: 600)")
    args = parser.parse_args(argv)
    print("CPU flags:", " ".join(cpu_flags()) or "unknown")
    with tempfile.TemporaryDirectory() as work:
        model = args.model or exported_model(Path(work))
        step = model.parents[1]  # REPOSITORY/NAME_model
        encoder, settings = served_tokenizer(step.parent, step.name.removesuffix("_model"))
        texts = load_texts()[: args.texts]
        made = policies(model, 2)
        wall: dict[str, list[float]] = {name: [] for name in made}
        cpu = dict.fromkeys(made, 0.0)
        for _ in range(2):
            for name, make in made.items():
                session = make()
                fused.run_texts(session, settings, EMBEDDING_ANSWER, texts[:1], encoder, max_batch_tokens=8192)  # warm-up
                for text in texts:
                    started, cpu_started = time.perf_counter(), time.process_time()
                    fused.run_texts(session, settings, EMBEDDING_ANSWER, [text], encoder, max_batch_tokens=8192)
                    wall[name].append(time.perf_counter() - started)
                    cpu[name] += time.process_time() - cpu_started
                    time.sleep(0.002)
                del session
        for name in made:
            print(f"{name:28} p50 {1000 * statistics.median(wall[name]):5.2f} ms, "
                  f"CPU {1000 * cpu[name] / len(wall[name]):5.2f} ms per text")
    return 0


if __name__ == "__main__":
    sys.exit(main())
