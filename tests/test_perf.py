"""The local sweep (hf2triton perf) against the real server, and its pure parts. No timing asserts."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from conftest import TOPICS
from hf2triton.cli import main
from hf2triton.perf.corpus import load_texts, texts_of_length
from hf2triton.cpu import CpuMeter, cpu_flags
from hf2triton.perf.report import CSV_COLUMNS, write_report
from hf2triton.perf.stats import composing_models, compute_shares, counters_from_stats, step_time
from hf2triton.perf.sweep import SweepSettings, Window, is_stable, run_sweep
from hf2triton.errors import Hf2TritonError, MissingDependencyError
from hf2triton.perf import wrk

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


needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None,
                               reason="wrk is not installed (scripts/test.sh installs it where apt-get can)")


@needs_wrk
@pytest.mark.e2e
def test_wrk_sweeps_the_http_endpoint_with_the_servers_statistics(server):
    settings = tiny_settings(server, urls={"http": server.http_url}, concurrencies=(1, 4), window_s=1.0,
                             warmup_s=0, load_generator="wrk")
    points = run_sweep(settings, load_texts(), CpuMeter())
    assert [(p.protocol, p.batch_size, p.concurrency) for p in points] == [
        ("http", 1, 1), ("http", 1, 4), ("http", 3, 1), ("http", 3, 4)]
    for point in points:
        assert point.errors == 0 and point.requests > 0 and point.p99_us >= point.p50_us > 0
        tokenizer, model, postprocess = point.steps
        # One window of one second was enough (stable_windows=1); Triton's statistics cover the
        # whole run: that window, and the few answers before wrk stopped.
        assert point.windows == 1 and point.inferences_per_s == pytest.approx(point.requests * point.batch_size)
        assert point.requests * 0.9 <= tokenizer.requests <= point.requests * 1.2 + point.concurrency
        assert model.executions > 0 and postprocess.requests > 0


@needs_wrk
@pytest.mark.e2e
def test_wrk_counts_windows_inside_one_run_and_stops_when_they_are_enough(server):
    from hf2triton.perf.sweep import request_batches

    bodies = wrk.triton_bodies(request_batches(load_texts()[:50], 1))
    url = f"http://{server.http_url}/v2/models/{TOPICS}/infer"
    run = wrk.run_wrk(url, bodies, 2, 0.5, max_windows=10, enough=lambda windows: len(windows) == 3)
    assert len(run.windows) == 3 and run.duration_s < 2.5  # interrupted, not run for its 7 s bound
    assert all(w.requests > 0 and w.errors == 0 and w.duration_s == 0.5 for w in run.windows)
    assert sum(w.requests for w in run.windows) <= run.requests  # the run also answered after its last window
    assert len(wrk.run_wrk(url, bodies, 2, 0.5, max_windows=2).windows) == 2


@needs_wrk
@pytest.mark.e2e
def test_wrk_counts_rejected_requests_with_the_servers_message(server):
    too_long = ["x" * 3000]  # over the topics model's 2000-byte limit: every request is rejected
    (point,) = run_sweep(tiny_settings(server, urls={"http": server.http_url}, concurrencies=(2,), batch_sizes=(1,),
                                       window_s=1.0, warmup_s=0, load_generator="wrk"), too_long)
    assert point.errors > 0 and point.requests == 0
    assert point.first_error.startswith("400") and "2000 bytes" in point.first_error


@needs_wrk
@pytest.mark.e2e
def test_cli_perf_with_wrk(server, tmp_path, capsys):
    status = main(["perf", "--model", TOPICS, "--protocol", "http", "--http-url", server.http_url,
                   "--load-generator", "wrk", "--concurrency", "2", "--window", "1", "--warmup", "0",
                   "--stable-windows", "1", "--max-windows", "1", "-o", str(tmp_path), "--prefix", "wrk"])
    assert status == 0
    assert "http b1 c2" in capsys.readouterr().out
    assert json.loads((tmp_path / "wrk.json").read_text())["settings"]["load_generator"] == "wrk"


def test_wrk_needs_plain_http(capsys):
    with pytest.raises(Hf2TritonError, match="wrk speaks plain HTTP only"):
        SweepSettings(model="m", urls={"grpc": "localhost:8001"}, load_generator="wrk")
    assert main(["perf", "--load-generator", "wrk", "--concurrency", "1", "-o", "/nonexistent"]) == 2
    assert "wrk speaks plain HTTP only" in capsys.readouterr().err


def test_a_missing_wrk_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(wrk.shutil, "which", lambda name: None)
    with pytest.raises(MissingDependencyError, match="apt-get install wrk"):
        wrk.run_wrk("http://localhost:1/", ["{}"], 1, 1)


def test_wrk_request_bodies_are_the_servers_json():
    from hf2triton.perf.sweep import request_batches

    texts = ['a "quoted" text', "ünïcode\nnewline"]
    bodies = wrk.triton_bodies(request_batches(texts, 2, count=1, pairs=True), with_pairs=True)
    assert len(bodies) == 1 and "\n" not in bodies[0]  # the Lua script reads one body per line
    body = json.loads(bodies[0])
    assert body["parameters"] == {"binary_data_output": True}
    assert [(t["name"], t["shape"], t["data"]) for t in body["inputs"]] == [
        ("TEXT", [2, 1], texts), ("TEXT_PAIR", [2, 1], texts[::-1])]
    assert json.loads(wrk.openai_bodies(["hi"], ".")[0]) == {"model": ".", "input": ["hi"]}


def test_wrk_results_count_answered_requests_and_keep_the_latency_shape():
    raw = {"duration_us": 2_000_000, "requests": 4, "connect": 0, "read": 1, "write": 0, "status": 2, "timeout": 1,
           "first_error": "400 too long", "latency_us": [[900, 2], [1000, 3], [5000, 3]]}
    run = wrk.parse_result(raw)
    assert run.duration_s == 2.0 and run.errors == 4 and run.first_error == "400 too long"
    assert run.requests == 2 and run.latencies_us == (1000.0, 5000.0)  # 2 of 8 recorded, evenly spread
    same = wrk.parse_result({**raw, "requests": 8, "status": 0})
    assert same.latencies_us == (900.0,) * 2 + (1000.0,) * 3 + (5000.0,) * 3
    assert wrk.parse_result({**raw, "status": 4}).requests == 0
    windows = tuple(wrk.WrkWindow(0.5, answered, 0, 2) for answered in (10, 40, 44))
    assert wrk.parse_result(raw, windows).settled(2) == (84, 84.0)  # the last two windows: 84 answers in 1 s
    assert run.settled(3) == (0, 0.0)


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
