"""The local sweep (hf2triton perf) against the real server, and its pure parts. No timing asserts."""

from __future__ import annotations

import csv
import json

import pytest

from conftest import TOPICS
from hf2triton.cli import main
from hf2triton.perf.corpus import load_texts, texts_of_length
from hf2triton.cpu import CpuMeter, cpu_flags
from hf2triton.perf.report import CSV_COLUMNS, write_report
from hf2triton.perf.stats import composing_models, compute_shares, counters_from_stats, step_time
from hf2triton.perf.sweep import SweepSettings, Window, is_stable, run_sweep
from hf2triton.errors import Hf2TritonError

PERF_ANALYZER_HEADER = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency"
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_settings(server, **overrides) -> SweepSettings:
    values = dict(model=TOPICS, urls={"grpc": server.grpc_url, "http": server.http_url}, concurrencies=(1, 2),
                  batch_sizes=(1, 3), window_s=0.3, warmup_s=0.1, stable_windows=1, max_windows=2)
    return SweepSettings(**{**values, **overrides})


@pytest.mark.e2e
def test_tiny_sweep_writes_perf_analyzer_csv_json_and_plots(server, tmp_path):
    settings = tiny_settings(server)
    seen = []
    points = run_sweep(settings, load_texts(), CpuMeter(), progress=lambda *args: seen.append(args))
    assert len(points) == settings.point_count == 8
    assert all(p.errors == 0 and p.requests > 0 for p in points)
    assert {len(p.steps) for p in points} == {3}  # tokenizer, model, postprocess
    files = write_report(points, tmp_path, "tiny", {"model": TOPICS}, "tiny sweep")
    assert len(files.csvs) == 4 and seen
    for path in files.csvs:
        lines = path.read_text().splitlines()
        assert lines[0] == PERF_ANALYZER_HEADER == ",".join(CSV_COLUMNS)
        rows = list(csv.DictReader(lines))
        assert [int(r["Concurrency"]) for r in rows] == [1, 2]
        assert all(float(r["Inferences/Second"]) > 0 and int(r["p99 latency"]) >= int(r["p50 latency"]) for r in rows)
    document = json.loads(files.json.read_text())
    steps = document["points"][0]["steps"]
    assert [s["model"] for s in steps] == [f"{TOPICS}_tokenizer", f"{TOPICS}_model", f"{TOPICS}_postprocess"]
    assert all(s["requests"] > 0 for s in steps)
    for plot in (files.throughput_plot, files.step_plot):
        assert plot.read_bytes()[:8] == PNG_MAGIC


@pytest.mark.e2e
def test_failed_requests_are_counted_and_reported(server):
    too_long = ["x" * 3000]  # over the topics model's 2000-byte limit: every request is rejected
    (point,) = run_sweep(tiny_settings(server, urls={"grpc": server.grpc_url}, concurrencies=(1,),
                                       batch_sizes=(1,)), too_long)
    assert point.errors > 0 and point.requests == 0
    assert "2000 bytes" in point.first_error


@pytest.mark.e2e
def test_cli_perf_prints_points_and_writes_files(server, tmp_path, capsys):
    status = main(["perf", "--model", TOPICS, "--grpc-url", server.grpc_url, "--concurrency", "1",
                   "--window", "0.3", "--warmup", "0.1", "--stable-windows", "1", "--max-windows", "1",
                   "-o", str(tmp_path), "--prefix", "cli"])
    out = capsys.readouterr().out
    assert status == 0
    assert "grpc b1 c1" in out and "cli_grpc_b1.csv" in out
    assert (tmp_path / "cli_throughput_p99.png").is_file() and (tmp_path / "cli.json").is_file()


def test_cli_perf_reports_an_unreachable_server(capsys):
    assert main(["perf", "--grpc-url", "127.0.0.1:1", "--concurrency", "1", "--max-windows", "1",
                 "--stable-windows", "1", "-o", "/nonexistent"]) == 2
    assert "error:" in capsys.readouterr().err


def test_grpc_json_statistics_parse_like_http():
    grpc_style = {
        "name": "m", "execution_count": "4",
        "inference_stats": {"success": {"count": "8", "ns": "900"}, "queue": {"count": "8", "ns": "8000"},
                            "compute_infer": {"count": "8", "ns": "16000"}},
        "batch_stats": [{"batch_size": "2", "compute_infer": {"count": "4", "ns": "8000"}}],
    }
    counters = counters_from_stats(grpc_style)
    assert (counters.requests, counters.executions, counters.queue_ns, counters.execution_compute_ns) == (8, 4, 8000, 8000)
    timing = step_time("m", counters)
    assert (timing.queue_us, timing.compute_infer_us, timing.execution_compute_us) == (1.0, 2.0, 8.0)
    assert compute_shares([timing]) == {"m": 1.0}


def test_composing_models_of_an_ensemble_and_a_plain_model():
    ensemble = {"config": {"ensemble_scheduling": {"step": [{"model_name": "a"}, {"model_name": "b"}]}}}
    assert composing_models("e", ensemble) == ("a", "b")
    assert composing_models("plain", {"name": "plain"}) == ("plain",)


def window(rate: float, latency: float) -> Window:
    from hf2triton.cpu import CpuUsage

    return Window(1.0, (latency,) * int(rate), 0.0, 0.0, 0, "", (), CpuUsage(0.0, 0.0))


def test_stability_needs_agreeing_windows():
    assert not is_stable([window(100, 10)] * 2, 3, 10)
    assert is_stable([window(100, 10), window(105, 10.5), window(96, 9.8)], 3, 10)
    assert not is_stable([window(100, 10), window(150, 10), window(100, 10)], 3, 10)


def test_a_sweep_sends_every_text():
    from hf2triton.perf.sweep import request_batches

    texts = [f"text {i}" for i in range(600)]
    sent = {row.decode() for batch in request_batches(texts, 1) for row in batch.texts[:, 0]}
    assert sent == set(texts)  # 600 requests, not the first 512 texts: the in-process cells read all 600
    assert len(request_batches(texts, 32)) == 512  # large batches wrap around
    assert len(request_batches(texts[:10], 1)) == 512


def test_sweep_settings_are_validated():
    with pytest.raises(Hf2TritonError, match="protocol.*concurrencies"):
        SweepSettings(model="m", urls={"udp": "x"}, concurrencies=(0,))


def test_corpus_is_real_text_of_chosen_lengths():
    texts = load_texts()
    assert len(texts) >= 100 and len(set(texts)) == len(texts)
    built = texts_of_length(texts, 20, 5, 12)
    assert len(built) == 20 and all(5 <= len(t.split()) <= 12 for t in built)
    assert isinstance(cpu_flags(), tuple)
