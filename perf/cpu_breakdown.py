"""Where the CPU goes while a server answers: per process (tritonserver, each python stub,
this load generator) and per step (Triton's statistics), for each model × concurrency.

    PYTHONPATH=src python perf/cpu_breakdown.py REPOSITORY MODEL [MODEL ...] [--concurrency 1 16 64] [--pairs]
        [--load-generator wrk]

Starts the bundled tritonserver on REPOSITORY, drives each MODEL with the project's load
generator (one text per request over gRPC, or HTTP from wrk, whose CPU counts as the load
generator's once it exits; the benchmark's 600 texts when present, else
the shipped corpus; ``--pairs``: each text with the next one as its ``TEXT_PAIR``, for
pair classifiers and rerankers) and prints texts/s, p50, CPU % per process (100 % = one core) and
each step's share of server compute with its requests per execution. How the fixed
cost per request was found (issue 11): the postprocess step ran once per request until
its inputs allowed ragged batches.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "perf"))

from bench_texts import cached_or_corpus  # noqa: E402

from hf2triton.cpu import CpuMeter, cpu_flags, group_pids, process_jiffies  # noqa: E402
from hf2triton.perf.sweep import LOAD_GENERATORS, SweepSettings, run_sweep  # noqa: E402

BENCH_TEXTS = REPO / "perf" / ".peers" / "texts"  # where perf/bench.py keeps its sentences
TICKS = os.sysconf("SC_CLK_TCK")


def process_label(pid: int) -> str:
    """tritonserver, the stub's model folder (python backend stubs name it), or the command."""
    if pid == os.getpid():
        return "load generator"
    try:
        words = (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "gone"
    if "tritonserver" in words[0]:
        return "tritonserver"
    folders = [Path(w).parent.parent.name for w in words if w.endswith("model.py")]
    return f"stub {folders[0]}" if folders else " ".join(words[:2])


def snapshot(pgid: int) -> dict[int, int]:
    return {pid: process_jiffies(pid) for pid in [*group_pids(pgid), os.getpid()]}


def cpu_by_process(before: dict[int, int], after: dict[int, int], seconds: float) -> dict[str, float]:
    """CPU % per label (instances of one step summed) between two snapshots."""
    used: dict[str, float] = defaultdict(float)
    for pid, jiffies in after.items():
        used[process_label(pid)] += (jiffies - before.get(pid, 0)) / TICKS / seconds * 100
    return dict(sorted(used.items(), key=lambda item: -item[1]))


def main(argv=None) -> int:
    from hf2triton.serving import LocalTritonServer, ServerConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repository", type=Path)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--seconds", type=float, default=6.0, help="measurement per cell (default: 6)")
    parser.add_argument("--pairs", action="store_true", help="send text pairs (pair classifiers, rerankers)")
    parser.add_argument("--load-generator", choices=LOAD_GENERATORS, default="asyncio",
                        help="asyncio clients over gRPC (default) or wrk over HTTP")
    args = parser.parse_args(argv)
    texts = cached_or_corpus(BENCH_TEXTS)
    print(f"CPU flags: {' '.join(cpu_flags()) or 'unknown'}; {os.cpu_count()} cores; {len(texts)} texts")
    config = ServerConfig(model_repository=args.repository, http_port=0, grpc_port=0, metrics_port=0)
    with LocalTritonServer(config).start(ready_timeout_s=300) as server:
        pgid = os.getpgid(server.pid)
        for model in args.models:
            for concurrency in args.concurrency:
                urls = {"http": server.http_url} if args.load_generator == "wrk" else {"grpc": server.grpc_url}
                settings = SweepSettings(model=model, urls=urls, concurrencies=(concurrency,),
                                         window_s=args.seconds / 3, warmup_s=1.0, stable_windows=3, max_windows=4,
                                         pairs=args.pairs, load_generator=args.load_generator)
                before, start = snapshot(pgid), time.monotonic()
                (point,) = run_sweep(settings, texts, CpuMeter(pgid))
                used = cpu_by_process(before, snapshot(pgid), time.monotonic() - start)
                print(f"{model} c{concurrency}: {point.inferences_per_s:.1f} texts/s, p50 {point.p50_us / 1000:.1f} ms, "
                      f"other processes {point.cpu_other_pct:.0f}% | "
                      + ", ".join(f"{label} {pct:.0f}%" for label, pct in used.items() if pct >= 1), flush=True)
                total = sum(step.execution_compute_us for step in point.steps) or 1
                print("    " + "; ".join(
                    f"{step.model}: {100 * step.execution_compute_us / total:.0f}% of server compute, "
                    f"{step.requests / max(step.executions, 1):.1f} requests/execution" for step in point.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
