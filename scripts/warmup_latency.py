#!/usr/bin/env python
"""First-request vs steady-state latency with and without model_warmup, side by side.

    python scripts/warmup_latency.py [REPOSITORY] [--model NAME] [--repeats 20]

Copies the repository twice (configs as written: with warm-up; and with every
``model_warmup`` removed), starts the bundled tritonserver on each in turn, and for each
sequence bucket sends one text of that length: the first request's latency, then the
median of ``--repeats`` more. Prints the server start time too (warm-up moves the cost
there), the CPU flags, and how busy the machine was (other processes share these cores).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hf2triton.client import Client
from hf2triton.contract import DEFAULT_MODEL_NAME
from hf2triton.serving import LocalTritonServer, ServerConfig
from hf2triton.repository import parse_pbtxt, to_pbtxt


def cpu_busy() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def without_warmup(source: Path, target: Path) -> None:
    shutil.copytree(source, target)
    for config_file in target.glob("*/config.pbtxt"):
        config = parse_pbtxt(config_file.read_text())
        config.ClearField("model_warmup")
        config_file.write_text(to_pbtxt(config))


def text_for(bucket: int) -> str:
    return " ".join(["word"] * max(1, bucket - 4))  # one token per word, plus [CLS]/[SEP]


def measure(repository: Path, model: str, buckets: list[int], repeats: int) -> tuple[float, dict[int, tuple[float, float]]]:
    config = ServerConfig(repository, http_port=0, grpc_port=0, metrics_port=0)
    start = time.perf_counter()
    with LocalTritonServer(config).start(ready_timeout_s=300) as server:
        ready_s = time.perf_counter() - start
        results = {}
        with Client(server.grpc_url, protocol="grpc", model=model) as client:
            client.wait_for_model(timeout_s=60)
            for bucket in buckets:
                text = text_for(bucket)
                times = []
                for _ in range(repeats + 1):
                    t = time.perf_counter()
                    client.infer([text])
                    times.append(time.perf_counter() - t)
                results[bucket] = (times[0], statistics.median(times[1:]))
    return ready_s, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repository", nargs="?", type=Path, default=Path("model_repository"))
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    model_config = parse_pbtxt((args.repository / f"{args.model}_model" / "config.pbtxt").read_text())
    buckets = [int(w.name.split("_")[1]) for w in model_config.model_warmup if w.name.startswith("bucket_")]
    if not buckets:
        print(f"{args.model}_model has no model_warmup samples: export without --no-warmup", file=sys.stderr)
        return 2
    flags = next((l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")), "")
    print("CPU:", " ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "amx_tile") if f" {f}" in flags))
    with tempfile.TemporaryDirectory() as tmp:
        cold = Path(tmp) / "no_warmup"
        without_warmup(args.repository, cold)
        rows = {}
        for label, repository in (("warm-up", args.repository.resolve()), ("no warm-up", cold)):
            busy0, total0 = cpu_busy()
            rows[label] = measure(repository, args.model, buckets, args.repeats)
            busy1, total1 = cpu_busy()
            print(f"{label}: server ready in {rows[label][0]:.1f} s; machine CPU busy "
                  f"{100 * (busy1 - busy0) / max(1, total1 - total0):.0f}% during the run")
    print(f"\n{'bucket':>6} | {'warm-up: first':>14} {'steady':>8} {'ratio':>6} | {'none: first':>11} {'steady':>8} {'ratio':>6}")
    for bucket in buckets:
        cells = []
        for label in ("warm-up", "no warm-up"):
            first, steady = rows[label][1][bucket]
            cells.append(f"{first * 1e3:11.1f} ms {steady * 1e3:5.1f} ms {first / steady:5.1f}x")
        print(f"{bucket:>6} | {cells[0]} | {cells[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
