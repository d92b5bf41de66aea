"""The benchmark's results document (JSON) and its printed ratios.

The document is plain data so ``readme_table.py`` can render the README's table from
the committed copy without importing the benchmark. Concurrencies are string keys
("1", "16", "64"), as JSON writes them.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import asdict
from datetime import datetime, timezone
from importlib import metadata

from hf2triton.cpu import cpu_flags
from hf2triton.perf.stats import compute_shares

SORTED_CEILING = "ort_b32_sorted"
INFINITY_ONNX = "infinity_onnx"


def step_share(point) -> float | None:
    """Share of execution compute outside the model step (tokenizer + postprocess); None when fused."""
    shares = compute_shares(point.steps)
    return sum(v for k, v in shares.items() if not k.endswith("_model")) if len(shares) > 1 else None


def median_round(rounds):
    """The (served point, in-process counterpart) pair of median served throughput (the lower of two middles)."""
    return sorted(rounds, key=lambda pair: pair[0].inferences_per_s)[(len(rounds) - 1) // 2]


def served_cell(rounds) -> dict:
    """A served cell measured in rounds: ``rounds`` holds (``PerfPoint``, its in-process
    counterpart ``InProcess`` measured just before it, or None) per round.

    The cell reports the round of median throughput; ``rounds`` keeps each round's pair, so
    the paired ratios are medians of per-round ratios (a drift between rounds cancels out).
    Errors count over every round.
    """
    point, adjacent = median_round(rounds)
    cell = {
        "texts_per_s": point.inferences_per_s, "p50_ms": point.p50_us / 1000, "p99_ms": point.p99_us / 1000,
        "requests": point.requests, "errors": sum(p.errors for p, _ in rounds),
        "first_error": next((p.first_error for p, _ in rounds if p.first_error), ""),
        "stable": point.stable, "other_cpu_pct": point.cpu_other_pct, "tokenizer_postprocess_share": step_share(point),
    }
    if adjacent is not None:
        cell["adjacent"] = asdict(adjacent)
    cell["rounds"] = [{"texts_per_s": p.inferences_per_s, "p50_ms": p.p50_us / 1000, "other_cpu_pct": p.cpu_other_pct,
                       "adjacent": None if a is None else asdict(a)} for p, a in rounds]
    return cell


def versions() -> dict[str, str]:
    found = {}
    for package in ("onnxruntime", "tokenizers", "transformers", "torch", "nvidia-pytriton"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator or math.isnan(numerator) or math.isnan(denominator):
        return None
    return numerator / denominator


def ratios(result: dict) -> dict[str, dict[str, float | None]]:
    """Per served variant: ÷ the length-sorted ceiling at c16/c64, ÷ Infinity ONNX at c1/c16/c64."""
    ceiling = result["ceilings"].get(SORTED_CEILING, {}).get("texts_per_s")
    infinity = result["peers"].get(INFINITY_ONNX, {}).get("points", {})
    found = {}
    for variant, cells in result["served"].items():
        row = {f"c{c}_over_sorted_ceiling": ratio(cells[c]["texts_per_s"], ceiling) for c in ("16", "64")}
        for c in ("1", "16", "64"):
            row[f"c{c}_over_infinity_onnx"] = ratio(cells[c]["texts_per_s"], infinity.get(c, {}).get("texts_per_s"))
        row |= paired(cells)
        found[variant] = row
    return found


def paired(cells: dict) -> dict[str, float | None]:
    """Against the in-process cell measured just before each served cell: c16/c64 ÷ the sorted
    ceiling, and c1's p50 minus batch 1's p50 (ms); the median over the cell's rounds. None
    where a cell has no counterpart."""
    row = {}
    for c in ("16", "64"):
        row[f"c{c}_over_adjacent_ceiling"] = _median([ratio(r["texts_per_s"], r["adjacent"]["texts_per_s"])
                                                      for r in _pairs(cells[c])])
    row["c1_p50_over_adjacent_b1_ms"] = _median([r["p50_ms"] - r["adjacent"]["p50_ms"] for r in _pairs(cells["1"])])
    return row


def _pairs(cell: dict) -> list[dict]:
    """The cell's rounds that have an in-process counterpart (results files from before
    rounds hold one served figure and its ``adjacent``)."""
    rounds = cell.get("rounds") or [{**cell, "adjacent": cell.get("adjacent")}]
    return [r for r in rounds if r.get("adjacent")]


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def contention(result: dict) -> dict[str, float]:
    """Other processes' CPU over every cell: the median and the worst."""
    values = [c["other_cpu_pct"] for c in result["ceilings"].values()]
    for cell in (cell for cells in result["served"].values() for cell in cells.values()):
        for measured in cell.get("rounds") or [cell]:
            values += [measured["other_cpu_pct"]] + ([measured["adjacent"]["other_cpu_pct"]]
                                                     if measured.get("adjacent") else [])
    values += [p["other_cpu_pct"] for peer in result["peers"].values() for p in peer.get("points", {}).values()]
    values = [v for v in values if v is not None and not math.isnan(v)]
    return {"median": statistics.median(values), "max": max(values)} if values else {}


def document(command: str, args, texts: list[str], source: str, ceilings, served, peers, passes=None) -> dict:
    """The results file; ``passes``: each ceiling measurement (name -> cell) when there were several."""
    words = [len(text.split()) for text in texts]
    result = {
        "command": command,
        "quick": bool(args.quick),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu_flags": list(cpu_flags()),
        "seconds_per_cell": args.seconds,
        "rounds": getattr(args, "rounds", 1),
        "load_generator": getattr(args, "load_generator", "asyncio"),
        "served_protocol": "HTTP" if getattr(args, "load_generator", "asyncio") == "wrk" else "gRPC",
        "max_other_pct": args.max_other,
        "texts": {"source": source, "count": len(texts), "median_words": statistics.median(words),
                  "max_words": max(words)},
        "versions": versions(),
        "ceilings": {name: asdict(cell) for name, cell in ceilings.items()},
        "ceiling_passes": {when: {name: round(cell.texts_per_s, 1) for name, cell in cells.items()}
                           for when, cells in (passes or {}).items()},
        "served": {variant: {str(c): served_cell(rounds) for c, rounds in cells.items()}
                   for variant, cells in served.items()},
        "peers": {name: {**peer, "points": {str(c): p for c, p in peer.get("points", {}).items()}}
                  for name, peer in peers.items()},
    }
    result["ratios"] = ratios(result)
    result["contention_pct"] = contention(result)
    return result


def served_by(result: dict) -> str:
    """How the served cells were loaded; results files from before ``load_generator`` used asyncio + gRPC."""
    generator = result.get("load_generator", "asyncio")
    return f"{result.get('served_protocol', 'gRPC')}, requests sent by {generator}"


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def print_report(result: dict) -> None:
    print(f"\n{result['command']}\nCPU flags: {' '.join(result['cpu_flags'])}; texts: {result['texts']['count']} "
          f"from {result['texts']['source']}")
    print("\nin-process (the served ONNX file, no server):")
    for name, cell in result["ceilings"].items():
        print(f"  {name:<28} {cell['texts_per_s']:8.1f} texts/s  p50 {cell['p50_ms']:7.1f} ms  "
              f"other CPU {cell['other_cpu_pct']:.0f}%")
    passes = result.get("ceiling_passes", {})
    if passes:
        print("  the faster of " + ", ".join(
            f"{when}: {' / '.join(f'{value:.0f}' for value in cells.values())}" for when, cells in passes.items()))
    print(f"\nserved ({served_by(result)}, one text per request) and peers, texts/s at c1 / c16 / c64 "
          "(other CPU %):")
    for variant, cells in result["served"].items():
        print(f"  hf2triton {variant:<18} " + " / ".join(f"{cells[c]['texts_per_s']:.1f}" for c in ("1", "16", "64"))
              + "  (" + "/".join(f"{cells[c]['other_cpu_pct']:.0f}" for c in ("1", "16", "64")) + ")")
    for name, peer in result["peers"].items():
        points = peer.get("points", {})
        if len(points) == 3:
            print(f"  {name:<28} " + " / ".join(f"{points[c]['texts_per_s']:.1f}" for c in ("1", "16", "64"))
                  + "  (" + "/".join(f"{points[c]['other_cpu_pct']:.0f}" for c in ("1", "16", "64")) + ")")
        else:
            print(f"  {name:<28} not measured: {peer.get('error', 'no points')}")
    print("\nratios (targets: ≥ 0.9 × sorted ceiling at c16/c64; ≥ 1.5 × Infinity ONNX at c16/c64, ≥ 1.0 at c1;"
          " p50 at c1 within 2 ms of batch 1):")
    for variant, row in result["ratios"].items():
        print(f"  {variant:<18} ÷ sorted ceiling c16 {_fmt(row['c16_over_sorted_ceiling'])} "
              f"c64 {_fmt(row['c64_over_sorted_ceiling'])}   ÷ Infinity ONNX c1 {_fmt(row['c1_over_infinity_onnx'])} "
              f"c16 {_fmt(row['c16_over_infinity_onnx'])} c64 {_fmt(row['c64_over_infinity_onnx'])}")
    print(f"paired with the in-process cell measured just before each served cell "
          f"(median of {result.get('rounds', 1)} rounds):")
    for variant, row in result["ratios"].items():
        gap = row.get("c1_p50_over_adjacent_b1_ms")
        print(f"  {variant:<18} ÷ sorted ceiling c16 {_fmt(row.get('c16_over_adjacent_ceiling'))} "
              f"c64 {_fmt(row.get('c64_over_adjacent_ceiling'))}   p50 c1 − batch 1: {_fmt(gap, 1)} ms")
    spread = result["contention_pct"]
    if spread:
        print(f"\nother processes' CPU per cell: median {spread['median']:.0f}%, max {spread['max']:.0f}%")
    for variant, cells in result["served"].items():
        errors = sum(cell["errors"] for cell in cells.values())
        if errors:
            first = next(cell["first_error"] for cell in cells.values() if cell["first_error"])
            print(f"  {variant}: {errors} failed requests, first: {first}")
