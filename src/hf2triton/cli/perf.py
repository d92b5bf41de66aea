"""``hf2triton perf``: sweep a running server; perf_analyzer CSV columns, JSON and plots.

The progress bar and the printed table are CLI concerns; the sweep itself is
:func:`hf2triton.perf.sweep.run_sweep`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path

from hf2triton.cli.infer import add_tls_arguments, tls_options
from hf2triton.cli.library import LibraryDefault, given
from hf2triton.contract import DEFAULT_MODEL_NAME, PROTOCOLS, local_url
from hf2triton.errors import MissingDependencyError

SETTINGS = "hf2triton.perf.sweep:SweepSettings"
# CLI option → SweepSettings field.
SETTINGS_FIELDS = {"window": "window_s", "warmup": "warmup_s", "stability": "stability_pct",
                   "stable_windows": "stable_windows", "max_windows": "max_windows",
                   "load_generator": "load_generator"}


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("perf", help="sweep a running server: perf_analyzer CSV columns, JSON, plots",
                                 description="Load a running server with asyncio clients (or wrk) over a concurrency "
                                 "range; write perf_analyzer -f CSV, per-step JSON and PNG plots.")
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME, help="model or ensemble (default: %(default)s)")
    parser.add_argument("--protocol", nargs="+", choices=PROTOCOLS, default=[PROTOCOLS[0]],
                        help="protocols to sweep (default: %(default)s)")
    parser.add_argument("--grpc-url", default=local_url("grpc"), help="(default: %(default)s)")
    parser.add_argument("--http-url", default=local_url("http"), help="(default: %(default)s)")
    parser.add_argument("--concurrency", nargs="+", type=int, default=LibraryDefault(SETTINGS, "concurrencies"),
                        help="requests in flight (default: %(default)s)")
    parser.add_argument("--batch-size", nargs="+", type=int, default=LibraryDefault(SETTINGS, "batch_sizes"),
                        help="texts per request (default: %(default)s)")
    parser.add_argument("--texts", type=Path, help="text file, one text per line (default: the shipped corpus)")
    parser.add_argument("--pairs", action="store_true",
                        help="send each text with the next one as its TEXT_PAIR: the load of a pair classifier "
                        "or reranker")
    parser.add_argument("--window", type=float, default=LibraryDefault(SETTINGS, "window_s"),
                        help="measurement window in s (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=LibraryDefault(SETTINGS, "warmup_s"),
                        help="warm-up per point in s (default: %(default)s)")
    parser.add_argument("--stability", type=float, default=LibraryDefault(SETTINGS, "stability_pct"),
                        help="windows agree within this %% (default: %(default)s)")
    parser.add_argument("--stable-windows", type=int, default=LibraryDefault(SETTINGS, "stable_windows"),
                        help="(default: %(default)s)")
    parser.add_argument("--max-windows", type=int, default=LibraryDefault(SETTINGS, "max_windows"),
                        help="bound per point (default: %(default)s)")
    parser.add_argument("--load-generator", choices=("asyncio", "wrk"),
                        default=LibraryDefault(SETTINGS, "load_generator"),
                        help="asyncio clients (Python) or wrk (C, plain HTTP only: --protocol http; takes a "
                        "quarter of the CPU, which matters when the load runs on the server's machine) "
                        "(default: %(default)s)")
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("perf/results"),
                        help="where CSV, JSON and PNG go (default: %(default)s)")
    parser.add_argument("--prefix", default="sweep", help="file name prefix (default: %(default)s)")
    add_tls_arguments(parser)
    parser.set_defaults(run=run_perf)


def sweep_settings(args: argparse.Namespace):
    from hf2triton.perf.sweep import SweepSettings

    values = given(args, *SETTINGS_FIELDS, rename=SETTINGS_FIELDS)
    for option, field in (("concurrency", "concurrencies"), ("batch_size", "batch_sizes")):
        if not isinstance(getattr(args, option), LibraryDefault):
            values[field] = tuple(getattr(args, option))
    urls = {p: (args.grpc_url if p == "grpc" else args.http_url) for p in args.protocol}
    return SweepSettings(model=args.model, urls=urls, tls=tls_options(args, *urls.values()), pairs=args.pairs,
                         **values)


def run_perf(args: argparse.Namespace) -> int:
    """Sweep a running server; print one line per point and where the files went."""
    from hf2triton.cpu import cpu_flags, meter_for_port
    from hf2triton.perf.corpus import load_texts
    from hf2triton.perf.report import write_report
    from hf2triton.perf.sweep import run_sweep

    settings = sweep_settings(args)
    texts = load_texts(args.texts)
    meter = meter_for_port(int(next(iter(settings.urls.values())).rsplit(":", 1)[1]))
    with progress_bar(settings.point_count) as progress:
        points = run_sweep(settings, texts, meter, progress)
    context = {
        "model": args.model, "urls": settings.urls, "cpu_flags": list(cpu_flags()), "cores": os.cpu_count(),
        "server_cpu_accounted": meter.server_pgid is not None,
        # What was measured, with the library's defaults filled in, and how it was asked for.
        "settings": {**dataclasses.asdict(settings), "texts": args.texts, "output_dir": args.output_dir,
                     "prefix": args.prefix},
    }
    files = write_report(points, args.output_dir, args.prefix, json_safe(context), f"{args.model} (local sweep)")
    print_points(points)
    for path in (*files.csvs, files.json, files.throughput_plot, files.step_plot):
        print(f"wrote {path}")
    return 1 if any(p.errors for p in points) else 0


def json_safe(value):
    return json.loads(json.dumps(value, default=str))


@contextlib.contextmanager
def progress_bar(points: int):
    """A tqdm bar over sweep points; the callback marks a point done when a new one starts."""
    try:
        from tqdm import tqdm
    except ImportError:
        raise MissingDependencyError("the progress bar needs tqdm: pip install 'hf2triton[perf]'") from None

    with tqdm(total=points, unit="point", file=sys.stderr, dynamic_ncols=True) as bar:
        seen: set[str] = set()

        def update(label: str, windows: int, inferences_per_s: float) -> None:
            if label not in seen:
                if seen:
                    bar.update(1)
                seen.add(label)
            bar.set_postfix_str(f"{label} window {windows}: {inferences_per_s:.0f} texts/s")

        yield update
        bar.update(points - bar.n)


def print_points(points) -> None:
    print(f"{'point':<16} {'texts/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'queue ms':>9} {'compute ms':>10} "
          f"{'errors':>6} {'stable':>6} {'other CPU':>9}")
    for p in points:
        compute = p.server.compute_input_us + p.server.compute_infer_us + p.server.compute_output_us
        print(f"{p.protocol + ' b' + str(p.batch_size) + ' c' + str(p.concurrency):<16} "
              f"{p.inferences_per_s:>9.1f} {p.p50_us / 1000:>8.2f} {p.p99_us / 1000:>8.2f} "
              f"{p.server.queue_us / 1000:>9.2f} {compute / 1000:>10.2f} {p.errors:>6} "
              f"{'yes' if p.stable else 'no':>6} {p.cpu_other_pct:>8.0f}%")
        if p.errors:
            print(f"  first error: {p.first_error}")
