"""Sweep results as perf_analyzer CSV (exact ``-f`` columns), a JSON with per-step time, PNG plots."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hf2triton.errors import MissingDependencyError
from hf2triton.perf.sweep import PerfPoint

# perf_analyzer -f: times in µs; server parts summed over an ensemble's composing models.
CSV_COLUMNS = (
    "Concurrency", "Inferences/Second", "Client Send", "Network+Server Send/Recv", "Server Queue",
    "Server Compute Input", "Server Compute Infer", "Server Compute Output", "Client Recv",
    "p50 latency", "p90 latency", "p95 latency", "p99 latency",
)
STEP_PHASES = ("queue_us", "compute_input_us", "compute_infer_us", "compute_output_us")


def csv_row(point: PerfPoint) -> list[str]:
    values = (
        point.client_send_us, point.network_us, point.server.queue_us, point.server.compute_input_us,
        point.server.compute_infer_us, point.server.compute_output_us, point.client_recv_us,
        point.p50_us, point.p90_us, point.p95_us, point.p99_us,
    )
    return [str(point.concurrency), f"{point.inferences_per_s:.2f}", *(str(round(v)) for v in values)]


def configuration(point: PerfPoint) -> str:
    return f"{point.protocol}_b{point.batch_size}"


def write_csvs(points: Sequence[PerfPoint], folder: Path, prefix: str) -> list[Path]:
    """One CSV per protocol × batch size, like one perf_analyzer run each: ``PREFIX_grpc_b1.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    by_config: dict[str, list[PerfPoint]] = {}
    for point in points:
        by_config.setdefault(configuration(point), []).append(point)
    written = []
    for config, rows in by_config.items():
        path = folder / f"{prefix}_{config}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(csv_row(p) for p in sorted(rows, key=lambda p: p.concurrency))
        written.append(path)
    return written


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(points: Sequence[PerfPoint], path: Path, context: dict[str, Any]) -> Path:
    """Every point with its per-step server time (queue and compute per request, µs)."""
    document = {**context, "points": [asdict(p) for p in points]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(document), indent=2) + "\n")
    return path


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependencyError(
            "plots need matplotlib: pip install 'hf2triton[perf]' (or matplotlib)"
        ) from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_throughput_latency(points: Sequence[PerfPoint], path: Path, title: str,
                            lines: dict[str, Sequence[PerfPoint]] | None = None) -> Path:
    """Throughput (texts/s) against p99 latency (ms), one line per configuration, labelled by concurrency.

    ``lines`` (label → points) overrides the grouping by protocol and batch size.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=90)
    if lines is None:
        lines = {}
        for point in points:
            lines.setdefault(configuration(point).replace("_b", ", batch "), []).append(point)  # type: ignore[union-attr]
    for label, group in lines.items():
        rows = sorted(group, key=lambda p: p.concurrency)
        xs, ys = [p.p99_us / 1000 for p in rows], [p.inferences_per_s for p in rows]
        axes.plot(xs, ys, marker="o", label=label)
        for p, x, y in zip(rows, xs, ys):
            axes.annotate(f"c{p.concurrency}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("p99 latency (ms, log scale)")
    axes.set_ylabel("throughput (texts/s)")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def short_name(step: str, steps: Sequence[str]) -> str:
    """``NAME_tokenizer`` → ``tokenizer`` when every step shares the ``NAME_`` prefix."""
    prefix = os.path.commonprefix(list(steps)) if len(steps) > 1 else ""
    prefix = prefix[: prefix.rfind("_") + 1]
    return step[len(prefix):] or step


def plot_step_time(points: Sequence[PerfPoint], path: Path, title: str) -> Path:
    """Stacked per-step queue and compute time per request (ms), one bar per point."""
    plt = _pyplot()
    labels = [f"{p.protocol}\nb{p.batch_size} c{p.concurrency}" for p in points]
    figure, axes = plt.subplots(figsize=(max(6, 0.7 * len(points) + 2), 4.5), dpi=90)
    bottoms = [0.0] * len(points)
    step_names = [s.model for s in points[0].steps] if points else []
    colors = plt.get_cmap("tab20").colors
    for index, step in enumerate(step_names):
        for phase, offset, hatch in (("queue", 1, "//"), ("compute", 0, "")):
            heights = []
            for p in points:
                found = next((s for s in p.steps if s.model == step), None)
                value = 0.0 if found is None else (found.queue_us if phase == "queue" else found.compute_us)
                heights.append(value / 1000)
            axes.bar(labels, heights, bottom=bottoms, color=colors[(2 * index + offset) % len(colors)],
                     hatch=hatch, label=f"{short_name(step, step_names)} {phase}", edgecolor="white",
                     linewidth=0.5)
            bottoms = [b + h for b, h in zip(bottoms, heights)]
    axes.set_ylabel("server time per request (ms)")
    axes.set_title(title, fontsize=10)
    axes.tick_params(axis="x", labelsize=7)
    axes.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


@dataclass(frozen=True)
class ReportFiles:
    csvs: tuple[Path, ...]
    json: Path
    throughput_plot: Path
    step_plot: Path


def write_report(points: Sequence[PerfPoint], folder: Path, prefix: str, context: dict[str, Any],
                 title: str) -> ReportFiles:
    """CSV per configuration, ``PREFIX.json``, ``PREFIX_throughput_p99.png`` and ``PREFIX_steps.png``."""
    return ReportFiles(
        csvs=tuple(write_csvs(points, folder, prefix)),
        json=write_json(points, folder / f"{prefix}.json", context),
        throughput_plot=plot_throughput_latency(points, folder / f"{prefix}_throughput_p99.png", title),
        step_plot=plot_step_time(points, folder / f"{prefix}_steps.png", f"{title}: server time per step"),
    )
