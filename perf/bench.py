"""Serving benchmark: hf2triton served, its in-process ceilings and Infinity, side by side in one run.

    PYTHONPATH=src python perf/bench.py                        # the README's run (a quiet machine)
    PYTHONPATH=src python perf/bench.py --quick                # validate the whole path in minutes
    PYTHONPATH=src python perf/bench.py --variants ensemble fused ensemble_1x2 --seconds 8

One run, one checkpoint (the default all-MiniLM-L6-v2), the same texts (600 real English
news sentences that are not in the project's corpus: see ``bench_texts.py``):

1. in-process ceilings: the served ONNX file with ONNX Runtime, batch 32 in arrival order,
   batch 32 sorted by length (the ceiling: tokens without padding), batch 1; plus ONNX
   Runtime's transformer-fused fp32 graph, sorted batch 32 (is it the faster graph?);
   measured before and again after the served cells, the faster of the two kept per cell
   (a ceiling measured while the machine was briefly slow would flatter the ratios);
2. hf2triton served: each layout/variant in ``--variants``, one text per request,
   concurrency 1 / 16 / 64 (closed loop), each cell in ``--rounds`` rounds (default 3), each
   round right after its in-process counterpart (batch 1 for c1, the sorted ceiling for
   c16/c64; half a cell's time, the server idle); the cell reports its median round;
3. Infinity (``infinity-emb``) ONNX and torch engines, installed into ``perf/.peers/infinity``
   and started as DESIGN.md says, answers checked against sentence-transformers first.

The load generator (``--load-generator``) drives every server alike: ``wrk`` (C, HTTP; the
default when it is installed) takes ~90 µs of CPU per request, the asyncio one (Python;
served cells over gRPC) ~320 µs: at 240 requests/s about 1 % against 4–5 % of the 2-core
machine the servers are measured on (``perf record -a`` during a c16 cell).

Ratios printed: served ÷ length-sorted ceiling at c16/c64 (the run's faster pass, and the
median over rounds of each round ÷ the one measured just before it), p50 at c1 minus batch
1's just before (median over rounds), served ÷
Infinity ONNX at c1/c16/c64. Every cell records the CPU other processes used (``hf2triton.cpu.CpuMeter``);
a cell over ``--max-other`` percent is measured again (``--retries``) and the quietest kept.
Results go to ``perf/results/bench_<time>.json``; ``--publish`` also writes
``perf/bench_results.json``, from which ``perf/readme_table.py --write`` makes the
README's performance table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "perf"))

from bench_ceiling import InProcess, batches_of, ceiling_model, measure_in_process, quietest  # noqa: E402
from bench_report import document, median_round, print_report  # noqa: E402
from hf2triton.cpu import CpuMeter, cpu_flags  # noqa: E402
from hf2triton.perf.report import plot_throughput_latency  # noqa: E402
from hf2triton.perf.sweep import LOAD_GENERATORS, PerfPoint, SweepSettings, run_sweep  # noqa: E402
from hf2triton.perf.wrk import INSTALL_HINT  # noqa: E402
from hf2triton.repository import ServingOptions  # noqa: E402

log = logging.getLogger("bench")

PEERS_DIR = REPO / "perf" / ".peers"
COMMITTED = REPO / "perf" / "bench_results.json"
CONCURRENCIES = (1, 16, 64)
# Instances × ONNX Runtime threads: "1x2" is one instance using both cores of this machine;
# the defaults run two instances sharing the cores (one thread each on 2 cores).
VARIANTS = {
    "ensemble": ServingOptions(layout="ensemble"),
    "ensemble_1x2": ServingOptions(layout="ensemble", model_instances=1),
    "ensemble_padded": ServingOptions(layout="ensemble", pack_tokens=0),  # no packed graph in the model step
    "ensemble_delay1ms": ServingOptions(layout="ensemble", model_queue_delay_us=1000),
    "fused": ServingOptions(layout="fused"),
    "fused_1x2": ServingOptions(layout="fused", model_instances=1),
    # Length-aware batching: 0 = the bucketed path (each request padded to a length bucket,
    # requests merged only within a bucket), and a smaller token budget than the default.
    "ensemble_buckets": ServingOptions(layout="ensemble", max_batch_tokens=0),
    "ensemble_tokens2048": ServingOptions(layout="ensemble", max_batch_tokens=2048),
    "fused_buckets": ServingOptions(layout="fused", max_batch_tokens=0),
    "fused_padded": ServingOptions(layout="fused", pack_tokens=0),  # no packed graph: padded sub-batches only
}
DEFAULT_VARIANTS = ("ensemble", "fused")  # each layout


def export_variants(root: Path, names: list[str]):
    """Export the default model once (as ``ensemble``), then write every other variant from its files."""
    from hf2triton.export.checkpoint import default_checkpoint
    from hf2triton.pipeline import ExportOptions, export_checkpoint
    from hf2triton.repository import RepositorySpec, write_repository

    from hf2triton.backends.onnx_model import PACKED_FILE

    base = export_checkpoint(ExportOptions(output_dir=root, name="ensemble", serving=VARIANTS["ensemble"]))
    packed = base.layout.onnx_file.parent / PACKED_FILE  # the model step's: the same for every variant here
    for name in names:
        if name != "ensemble":
            write_repository(RepositorySpec(root, name, base.checkpoint, base.layout.onnx_file, base.tokenizer_json,
                                            base.settings, VARIANTS[name], manifest={"variant": name},
                                            packed_onnx_file=packed if packed.is_file() else None))
    return default_checkpoint()


def attention_shape(checkpoint: Path) -> tuple[int, int]:
    """(heads, hidden size) from config.json: ORT's optimizer cannot detect them on these graphs."""
    config = json.loads((checkpoint / "config.json").read_text())
    return int(config["num_attention_heads"]), int(config["hidden_size"])


CeilingCells = dict[str, tuple[object, list[list[str]]]]


def ceiling_cells(root: Path, checkpoint: Path, texts: list[str], args) -> CeilingCells:
    """Arrival-order and length-sorted batch 32, batch 1, and the fused graph sorted at batch 32."""
    from hf2triton.precision.quantize import fuse_for_cpu

    model = ceiling_model(root, "ensemble")
    lengths = model.lengths(texts)
    cells = {
        "ort_b32_arrival": (model, batches_of(texts, 32)),
        "ort_b32_sorted": (model, batches_of(texts, 32, lengths)),
        "ort_b1": (model, batches_of(texts, 1)),
    }
    if not args.no_fused_graph:
        heads, hidden = attention_shape(checkpoint)
        fused_file = fuse_for_cpu(root / "ensemble_model" / "1" / "model.onnx", root.parent / "fused_graph.onnx",
                                  heads=heads, hidden=hidden)
        cells["ort_fused_graph_b32_sorted"] = (ceiling_model(root, "ensemble", fused_file), cells["ort_b32_sorted"][1])
    return cells


def measure_ceilings(cells: CeilingCells, args, when: str) -> dict[str, InProcess]:
    meter = CpuMeter()
    found = {}
    for name, (call, batches) in cells.items():
        found[name] = measure_in_process(name, call, batches, args.seconds, args.max_other, args.retries, meter)
        print(f"  in-process {name} ({when}): {found[name].texts_per_s:.1f} texts/s "
              f"(other CPU {found[name].other_cpu_pct:.0f}%)", flush=True)
    return found


def faster_cells(first: dict[str, InProcess], again: dict[str, InProcess]) -> dict[str, InProcess]:
    """Per cell, the pass with more texts/s: the ratios divide by the higher ceiling."""
    return {name: max(first[name], again[name], key=lambda cell: cell.texts_per_s) for name in first}


def measure_served(server, variant: str, texts: list[str], concurrency: int, args) -> PerfPoint:
    meter = CpuMeter(os.getpgid(server.pid))
    over_http = args.load_generator == "wrk"  # wrk speaks HTTP only
    settings = SweepSettings(model=variant, urls={"http": server.http_url} if over_http else {"grpc": server.grpc_url},
                             concurrencies=(concurrency,), window_s=args.seconds / 3, warmup_s=1.0,
                             stable_windows=3, max_windows=6, load_generator=args.load_generator)
    best = quietest(f"{variant} c{concurrency}", lambda: run_sweep(settings, texts, meter)[0],
                    lambda point: point.cpu_other_pct, args.max_other, args.retries)
    print(f"  served {variant} c{concurrency}: {best.inferences_per_s:.1f} texts/s "
          f"(other CPU {best.cpu_other_pct:.0f}%)", flush=True)
    return best


# The in-process cell each served concurrency is paired with: batch 1 (latency) for c1,
# the length-sorted ceiling (throughput) under load.
ADJACENT_CEILING = {1: "ort_b1", 16: "ort_b32_sorted", 64: "ort_b32_sorted"}

ServedCells = dict[str, dict[int, list[tuple[PerfPoint, InProcess]]]]


def measure_all_served(root: Path, texts: list[str], cells: CeilingCells, args) -> ServedCells:
    """Each served cell in ``args.rounds`` rounds, each round after its in-process
    counterpart (same machine state: these machines drift by 10 % within a run), measured
    with the server idle."""
    from hf2triton.serving import LocalTritonServer, ServerConfig

    config = ServerConfig(model_repository=root, http_port=0, grpc_port=0, metrics_port=0)
    meter = CpuMeter()
    found: ServedCells = {}
    with LocalTritonServer(config).start(ready_timeout_s=300) as server:
        for variant in args.variants:
            for concurrency in CONCURRENCIES:
                name = ADJACENT_CEILING[concurrency]
                call, batches = cells[name]
                for _ in range(args.rounds):
                    adjacent = measure_in_process(name, call, batches, args.seconds / 2, args.max_other,
                                                  args.retries, meter)
                    print(f"  in-process {name} (just before): {adjacent.texts_per_s:.1f} texts/s, "
                          f"p50 {adjacent.p50_ms:.1f} ms", flush=True)
                    point = measure_served(server, variant, texts, concurrency, args)
                    found.setdefault(variant, {}).setdefault(concurrency, []).append((point, adjacent))
    return found


def measure_peers(checkpoint: Path, work: Path, texts: list[str], args) -> dict[str, dict]:
    """Infinity's ONNX and torch engines: answers checked first, then c1/c16/c64; errors recorded, not raised."""
    import bench_peers

    results: dict[str, dict] = {}
    try:
        venv = bench_peers.install_infinity(PEERS_DIR / "infinity")
        folder = bench_peers.prepare_model_folder(venv, checkpoint, work / "infinity-model")
        reference = sentence_transformers_embeddings(checkpoint, answer_sample(texts))
    except bench_peers.PeerError as error:
        print(f"  Infinity: {error}", flush=True)
        return {f"infinity_{e}": {"error": str(error)} for e in ("onnx", "torch")}
    for engine, label in (("optimum", "infinity_onnx"), ("torch", "infinity_torch")):
        try:
            with bench_peers.InfinityServer(venv, folder, engine, work / f"{label}.log") as server:
                answers = bench_peers.check_answers(server.url, answer_sample(texts), reference)
                print(f"  {label}: answers vs sentence-transformers cosine mean {answers.mean_cosine:.6f} "
                      f"min {answers.min_cosine:.6f}", flush=True)
                results[label] = {"answers": asdict(answers) | {"passed": answers.passed}, "points": {}}
                if not answers.passed:
                    results[label]["error"] = f"answers differ from sentence-transformers (min cosine " \
                                              f"{answers.min_cosine:.4f} < {bench_peers.MIN_COSINE}): speed not counted"
                    continue
                for concurrency in CONCURRENCIES:
                    point = measure_peer_cell(server, texts, concurrency, args)
                    results[label]["points"][concurrency] = asdict(point)
        except bench_peers.PeerError as error:
            print(f"  {label}: {error}", flush=True)
            results[label] = {"error": str(error)}
    return results


def measure_peer_cell(server, texts: list[str], concurrency: int, args):
    import bench_peers

    best = quietest(f"{server.engine} c{concurrency}",
                    lambda: bench_peers.measure_peer(server, texts, concurrency, args.seconds, args.load_generator),
                    lambda point: point.other_cpu_pct, args.max_other, args.retries)
    print(f"  {server.engine} c{concurrency}: {best.texts_per_s:.1f} texts/s (other CPU {best.other_cpu_pct:.0f}%)",
          flush=True)
    return best


def answer_sample(texts: list[str], count: int = 48) -> list[str]:
    """The longest texts and a spread of the rest: long texts are where truncation and pooling differ."""
    by_length = sorted(texts, key=len)
    return by_length[-count // 2:] + by_length[:: max(1, len(texts) // (count - count // 2))][: count - count // 2]


def sentence_transformers_embeddings(checkpoint: Path, texts: list[str]):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(checkpoint), device="cpu").encode(texts, convert_to_numpy=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(DEFAULT_VARIANTS),
                        help=f"served variants (default: {' '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement time per cell (default: 8)")
    parser.add_argument("--quick", action="store_true",
                        help="validate every path fast: 1.5 s per cell, no re-measuring (numbers not comparable)")
    parser.add_argument("--max-other", type=float, default=25.0,
                        help="re-measure when other processes used more CPU than this %% (default: 25)")
    parser.add_argument("--retries", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds per served cell, each after its in-process counterpart; the report gives "
                        "the median round and the median of the paired ratios (default: 3)")
    parser.add_argument("--load-generator", choices=LOAD_GENERATORS, default=None,
                        help="what sends the requests, to every server alike: wrk (C, HTTP; the default when "
                        "installed) or asyncio (Python; gRPC to hf2triton, HTTP to Infinity)")
    parser.add_argument("--texts", type=Path, help="your own texts, one per line (default: 600 news sentences)")
    parser.add_argument("--no-peers", action="store_true", help="skip Infinity")
    parser.add_argument("--no-fused-graph", action="store_true", help="skip the fused-graph in-process cell")
    parser.add_argument("--publish", action="store_true",
                        help=f"also write {COMMITTED.relative_to(REPO)} (then run perf/readme_table.py --write)")
    parser.add_argument("-o", "--output-dir", type=Path, default=REPO / "perf" / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.retries, args.rounds = 1.5, 0, 1
    if args.load_generator is None:
        args.load_generator = "wrk" if shutil.which("wrk") else "asyncio"
        if args.load_generator == "asyncio":
            print(f"note: wrk is not installed, so Python clients send the requests (more CPU taken from the "
                  f"servers measured); {INSTALL_HINT}", flush=True)
    if args.seconds <= 0 or args.retries < 0 or args.rounds < 1:
        parser.error("--seconds must be positive, --retries 0 or more and --rounds 1 or more")
    return args


def main(argv=None) -> int:
    from hf2triton.serving import LocalTritonServer, ServerConfig
    from bench_texts import TextSourceError, benchmark_texts

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    command = "PYTHONPATH=src python perf/bench.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        texts, source = benchmark_texts(PEERS_DIR / "texts", args.texts)
    except TextSourceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    words = [len(t.split()) for t in texts]
    print(f"CPU: {os.cpu_count()} cores, flags {' '.join(cpu_flags()) or 'none of AVX2/AVX-512/VNNI'}; "
          f"{len(texts)} texts (median {statistics.median(words):.0f} words, max {max(words)}) from {source}; "
          f"one text per served request, sent by {args.load_generator}", flush=True)
    with tempfile.TemporaryDirectory(prefix="hf2triton-bench-") as tmp:
        root = Path(tmp) / "repository"
        checkpoint = export_variants(root, args.variants)
        cells = ceiling_cells(root, checkpoint, texts, args)
        before = measure_ceilings(cells, args, "before the served cells")
        served = measure_all_served(root, texts, cells, args)
        after = measure_ceilings(cells, args, "after")
        peers = {} if args.no_peers else measure_peers(checkpoint, Path(tmp), texts, args)
    result = document(command, args, texts, source, faster_cells(before, after), served, peers,
                      passes={"before": before, "after": after})
    print_report(result)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    written = [args.output_dir / f"bench_{stamp}.json"] + ([COMMITTED] if args.publish else [])
    for path in written:
        path.write_text(json.dumps(result, indent=2) + "\n")
    plot = plot_throughput_latency([], args.output_dir / f"bench_{stamp}_throughput_p99.png",
                                   f"all-MiniLM-L6-v2 served on this CPU, {result['served_protocol']}, "
                                   "1 text/request, c = 1/16/64",
                                   lines={v: [median_round(rounds)[0] for rounds in cells.values()]
                                          for v, cells in served.items()})
    if args.publish:
        written.append(REPO / "perf" / "throughput_p99.png")
        shutil.copyfile(plot, written[-1])
    print(f"\nwrote {', '.join(str(p) for p in written + [plot])}")
    errors = sum(cell["errors"] for cells in result["served"].values() for cell in cells.values())
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
