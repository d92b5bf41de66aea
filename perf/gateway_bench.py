"""Gateway overhead benchmark: HTTP through ``hf2triton gateway`` vs direct gRPC to the ensemble, side by side.

    PYTHONPATH=src python perf/gateway_bench.py                      # export the default model, start a server
    PYTHONPATH=src python perf/gateway_bench.py --triton-url 127.0.0.1:8001 --model all_minilm_l6_v2
    PYTHONPATH=src python perf/gateway_bench.py --seconds 2 --rounds 1   # a quick check that it runs

One text per request, from the shipped corpus, at each concurrency (default 1 and 16).
The gateway runs as its own process (``python -m hf2triton.cli gateway``), as deployed.
Each round measures direct gRPC (``tritonclient.grpc.aio``) and then the gateway
(``POST /v1/embeddings`` over keep-alive HTTP with aiohttp) for ``--seconds`` each, so
every gateway cell has a direct cell measured right before it; ratios come from those
pairs (median over rounds). Targets (issue 14): gateway throughput >= 0.9x direct at
concurrency 16, and <= 2 ms added p50 latency at concurrency 1.

The machines are shared: each cell records the CPU other processes used (/proc/stat minus
this process, the server's process group and the gateway); read ratios from quiet cells.
Results also go to perf/results/gateway_bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hf2triton.cpu import CpuMeter, cpu_flags, process_jiffies  # noqa: E402
from hf2triton.perf.corpus import load_texts  # noqa: E402

DEFAULT_MODEL = "all_minilm_l6_v2"
TARGET_THROUGHPUT_RATIO = 0.9  # at concurrency 16
TARGET_ADDED_P50_MS = 2.0  # at concurrency 1


@dataclass(frozen=True)
class Cell:
    path: str  # "direct" or "gateway"
    concurrency: int
    requests: int
    errors: int
    seconds: float
    throughput: float  # requests (= texts) per second
    p50_ms: float
    p99_ms: float
    cpu_other_pct: float
    gateway_cpu_ms_per_request: float  # CPU the gateway process spent per answered request (gateway cells)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--triton-url", help="a running Triton's gRPC HOST:PORT (default: export the default "
                        "model into a temporary repository and start the bundled server)")
    parser.add_argument("--model-repository", type=Path, help="the repository that Triton serves, when it is on "
                        "this machine: the gateway counts tokens with its tokenizer.json, as `hf2triton serve "
                        "--gateway-port` does (without it, each request also runs the tokenizer step on Triton)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="embeddings ensemble (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=10.0, help="per cell (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each cell (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="direct/gateway pairs per concurrency")
    parser.add_argument("--output", type=Path, default=REPO / "perf" / "results" / "gateway_bench.json")
    return parser.parse_args(argv)


@contextlib.contextmanager
def triton(args: argparse.Namespace) -> Iterator[tuple[str, int | None, Path | None]]:
    """(gRPC URL, server process group or None, model repository or None) of the Triton to measure."""
    if args.triton_url:
        yield args.triton_url, None, args.model_repository
        return
    from hf2triton.pipeline import ExportOptions, export_checkpoint
    from hf2triton.serving import LocalTritonServer, ServerConfig

    with tempfile.TemporaryDirectory(prefix="hf2triton-gateway-bench-") as tmp:
        root = Path(tmp) / "model_repository"
        print("exporting the default model ...", flush=True)
        export_checkpoint(ExportOptions(output_dir=root, name=args.model))
        config = ServerConfig(model_repository=root, http_port=0, grpc_port=0, metrics_port=0)
        with LocalTritonServer(config).start(ready_timeout_s=300) as server:
            yield server.grpc_url, os.getpgid(server.pid), root


@contextlib.contextmanager
def gateway_process(triton_url: str, repository: Path | None, log: Path) -> Iterator[tuple[str, int]]:
    """(base URL, pid) of a gateway subprocess logging to ``log``, stopped on exit."""
    from hf2triton.serving import free_port

    port = free_port()
    extra = ["--model-repository", str(repository)] if repository else []
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("HF2TRITON_GATEWAY_API_KEY", None)
    process = subprocess.Popen([sys.executable, "-m", "hf2triton.gateway", "--triton-url", triton_url,
                                "--port", str(port), *extra], env=env, stdout=subprocess.DEVNULL,
                               stderr=log.open("wb"))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise SystemExit(f"the gateway exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the gateway did not become healthy within 60 s")
            time.sleep(0.2)
        yield url, process.pid
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def drive(send: Callable[[str], Awaitable[None]], texts: list[str], concurrency: int,
                warmup_s: float, seconds: float) -> tuple[list[float], int, float]:
    """Closed loop: ``concurrency`` workers send one text at a time; latencies of the timed window."""
    cycle = itertools.cycle(texts)
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    measure_from, stop_at = start + warmup_s, start + warmup_s + seconds

    async def worker() -> None:
        nonlocal errors
        while (now := time.perf_counter()) < stop_at:
            try:
                await send(next(cycle))
            except Exception:  # noqa: BLE001 - counted, the benchmark goes on
                errors += 1
                continue
            if now >= measure_from:
                latencies.append(time.perf_counter() - now)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, seconds


async def measure(path: str, url: str, model: str, texts: list[str], concurrency: int, args: argparse.Namespace,
                  meter: CpuMeter, gateway_pid: int) -> Cell:
    if path == "direct":
        import tritonclient.grpc as grpcclient
        import tritonclient.grpc.aio as grpcaio

        client = grpcaio.InferenceServerClient(url)
        outputs = [grpcclient.InferRequestedOutput("EMBEDDING")]

        async def send(text: str) -> None:
            tensor = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
            await client.infer(model, [tensor], outputs=outputs)

        closer = client.close
    else:
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency))

        async def send(text: str) -> None:
            async with session.post(url + "/v1/embeddings", json={"model": model, "input": text}) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")

        closer = session.close
    before, gateway_before = meter.sample(), process_jiffies(gateway_pid)
    try:
        latencies, errors, seconds = await drive(send, texts, concurrency, args.warmup, args.seconds)
    finally:
        await closer()
    after, gateway_after = meter.sample(), process_jiffies(gateway_pid)
    usage = CpuMeter.usage(before, after)
    gateway_pct = 100.0 * (gateway_after - gateway_before) / max(1, after.total - before.total)
    ms = np.asarray(latencies) * 1000 if latencies else np.array([float("nan")])
    # Requests of the warm-up are answered too: spread the gateway's CPU over every request sent.
    answered = max(1, round(len(latencies) * (args.warmup + seconds) / seconds))
    gateway_ms = 1000.0 * (gateway_after - gateway_before) / os.sysconf("SC_CLK_TCK") / answered
    return Cell(path, concurrency, len(latencies), errors, seconds, len(latencies) / seconds,
                float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), max(0.0, usage.other_pct - gateway_pct),
                gateway_ms if path == "gateway" else 0.0)


def summarise(cells: list[Cell], concurrency: int) -> dict[str, float]:
    pairs = [(d, g) for d, g in zip(cells[0::2], cells[1::2]) if d.concurrency == g.concurrency == concurrency]
    return {
        "throughput_ratio": statistics.median(g.throughput / d.throughput for d, g in pairs if d.throughput),
        "added_p50_ms": statistics.median(g.p50_ms - d.p50_ms for d, g in pairs),
        "added_p99_ms": statistics.median(g.p99_ms - d.p99_ms for d, g in pairs),
        "gateway_cpu_ms_per_request": statistics.median(g.gateway_cpu_ms_per_request for _, g in pairs),
    }


async def run(args: argparse.Namespace, triton_url: str, server_pgid: int | None, repository: Path | None,
              texts: list[str]) -> list[Cell]:
    meter = CpuMeter(server_pgid)
    cells: list[Cell] = []
    log = args.output.with_suffix(".gateway.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with gateway_process(triton_url, repository, log) as (gateway_url, gateway_pid):
        for concurrency in args.concurrency:
            for _ in range(args.rounds):
                for path, url in (("direct", triton_url), ("gateway", gateway_url)):
                    cell = await measure(path, url, args.model, texts, concurrency, args, meter, gateway_pid)
                    cells.append(cell)
                    print(f"  c{concurrency:<3} {path:8} {cell.throughput:8.1f} texts/s  p50 {cell.p50_ms:7.2f} ms  "
                          f"p99 {cell.p99_ms:7.2f} ms  errors {cell.errors}  other CPU {cell.cpu_other_pct:4.0f}%"
                          + (f"  gateway CPU {cell.gateway_cpu_ms_per_request:.2f} ms/request" if path == "gateway" else ""),
                          flush=True)
    return cells


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    texts = load_texts()
    print(f"CPU: {os.cpu_count()} cores, flags {' '.join(cpu_flags()) or 'none of AVX2/AVX-512/VNNI'}; "
          f"{len(texts)} corpus texts, one text per request; {args.rounds} rounds of {args.seconds:g} s cells",
          flush=True)
    with triton(args) as (triton_url, server_pgid, repository):
        cells = asyncio.run(run(args, triton_url, server_pgid, repository, texts))
    summary = {c: summarise(cells, c) for c in args.concurrency}
    print("\ngateway vs direct gRPC (median over rounds)")
    for concurrency, s in summary.items():
        print(f"  c{concurrency:<3} throughput {s['throughput_ratio']:.2f}x   added p50 {s['added_p50_ms']:+.2f} ms   "
              f"added p99 {s['added_p99_ms']:+.2f} ms   gateway CPU {s['gateway_cpu_ms_per_request']:.2f} ms/request")
    if 16 in summary:
        print(f"target at c16: throughput >= {TARGET_THROUGHPUT_RATIO}x -> {summary[16]['throughput_ratio']:.2f}x")
    if 1 in summary:
        print(f"target at c1: added p50 <= {TARGET_ADDED_P50_MS} ms -> {summary[1]['added_p50_ms']:+.2f} ms")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"cells": [asdict(c) for c in cells], "summary": summary,
                                       "cpu_flags": list(cpu_flags())}, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
