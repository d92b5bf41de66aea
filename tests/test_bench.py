"""perf/bench.py's parts: texts, peers' command line, ratios, the generated README table, the GPU check.

No timing assertions: the benchmark's numbers come from a run on a quiet machine; these
tests check that its pieces compute, render and refuse what they should.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "perf"))

import bench_peers  # noqa: E402
import bench_texts  # noqa: E402
import readme_table  # noqa: E402
from bench_ceiling import batches_of, quietest  # noqa: E402
from bench_report import ratios  # noqa: E402


def test_readme_table_is_generated_from_the_committed_results():
    result = json.loads(readme_table.RESULTS.read_text(encoding="utf-8"))
    readme = readme_table.README.read_text(encoding="utf-8")
    assert readme_table.current_table(readme) == readme_table.render(result), \
        "README.md's performance table is stale: run python perf/readme_table.py --write"
    assert f"`{result['command']}`" in readme  # every figure names the command that produced it
    assert result["command"].startswith("PYTHONPATH=src python perf/bench.py")


def test_committed_results_hold_every_cell_of_the_run():
    result = json.loads(readme_table.RESULTS.read_text(encoding="utf-8"))
    assert set(result["ceilings"]) >= {"ort_b32_arrival", "ort_b32_sorted", "ort_b1"}
    assert result["served"] and all(set(cells) == {"1", "16", "64"} for cells in result["served"].values())
    assert set(result["peers"]) == {"infinity_onnx", "infinity_torch"}
    assert result["texts"]["count"] == 600 and "lee_background" in result["texts"]["source"]
    for peer in result["peers"].values():  # speed counted only after the answers matched
        assert "error" in peer or (peer["answers"]["passed"] and set(peer["points"]) == {"1", "16", "64"})


def test_readme_check_mode_flags_a_stale_table(tmp_path, monkeypatch):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{readme_table.START}\nold figures\n{readme_table.END}\noutro\n")
    monkeypatch.setattr(readme_table, "README", readme)
    result = document({"1": {"texts_per_s": 50.0}, "16": {"texts_per_s": 90.0}, "64": {"texts_per_s": 80.0}})
    result |= {"command": "PYTHONPATH=src python perf/bench.py --quick", "quick": True, "date": "today", "cores": 2,
               "cpu_flags": ["avx2"], "seconds_per_cell": 1.5, "contention_pct": {"median": 3.0, "max": 9.0},
               "texts": {"source": "here", "count": 600, "median_words": 22, "max_words": 67}}
    result["ratios"] = ratios(result)
    results = tmp_path / "results.json"
    results.write_text(json.dumps(result))
    assert readme_table.main(["--check", "--results", str(results)]) == 1
    assert readme_table.main(["--write", "--results", str(results)]) == 0
    assert readme_table.main(["--check", "--results", str(results)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("\noutro\n") and "old figures" not in text
    assert "`PYTHONPATH=src python perf/bench.py --quick`" in text and "| ensemble | 0.90 | 0.50 | 2.00 / 2.00 / 1.25 | — / — | — |" in text
    assert "--quick` validation run" in text


def test_replace_table_needs_the_markers():
    with pytest.raises(ValueError, match="lacks the markers"):
        readme_table.replace_table("no markers here", "table")


def document(infinity_points: dict | None) -> dict:
    cell = {"texts_per_s": 100.0, "p50_ms": 10.0, "other_cpu_pct": 5.0}
    peers = {"infinity_onnx": {"points": infinity_points}} if infinity_points else {"infinity_onnx": {"error": "x"}}
    return {"ceilings": {"ort_b32_sorted": {"texts_per_s": 200.0, "p50_ms": 110.0, "other_cpu_pct": 1.0}},
            "served": {"ensemble": {"1": cell, "16": {**cell, "texts_per_s": 180.0}, "64": cell}}, "peers": peers}


def test_ratios_against_the_sorted_ceiling_and_infinity_onnx():
    row = ratios(document({"1": {"texts_per_s": 50.0}, "16": {"texts_per_s": 90.0}, "64": {"texts_per_s": 0.0}}))
    assert row["ensemble"]["c16_over_sorted_ceiling"] == pytest.approx(0.9)
    assert row["ensemble"]["c64_over_sorted_ceiling"] == pytest.approx(0.5)
    assert row["ensemble"]["c1_over_infinity_onnx"] == pytest.approx(2.0)
    assert row["ensemble"]["c16_over_infinity_onnx"] == pytest.approx(2.0)
    assert row["ensemble"]["c64_over_infinity_onnx"] is None  # no division by a failed peer cell
    assert ratios(document(None))["ensemble"]["c1_over_infinity_onnx"] is None


def test_each_served_cell_is_paired_with_the_in_process_cell_measured_just_before_it():
    from bench_ceiling import InProcess
    from dataclasses import asdict

    from bench_report import paired, served_cell
    from hf2triton.perf.sweep import PerfPoint

    def point(texts_per_s: float, p50_ms: float) -> PerfPoint:
        return PerfPoint(protocol="grpc", batch_size=1, concurrency=1, inferences_per_s=texts_per_s, requests=10,
                         errors=0, first_error="", client_send_us=0, network_us=0, server=None, client_recv_us=0,
                         p50_us=p50_ms * 1000, p90_us=0, p95_us=0, p99_us=0, mean_latency_us=0, steps=(), windows=3,
                         stable=True, cpu_busy_pct=0, cpu_other_pct=2.0)

    result = document(None)
    b1, ceiling = (lambda ms: InProcess("ort_b1", 200.0, ms, 9.0, 1.0)), (
        lambda texts_per_s: InProcess("ort_b32_sorted", texts_per_s, 110.0, 200.0, 0.0))
    result["served"]["ensemble"] = {
        "1": served_cell([(point(150.0, 6.5), b1(4.8))]),
        # three rounds: the machine slowed in the second; each round divides by its own ceiling
        "16": served_cell([(point(225.0, 70.0), ceiling(250.0)), (point(180.0, 80.0), ceiling(200.0)),
                           (point(260.0, 60.0), ceiling(250.0))]),
        "64": served_cell([(point(240.0, 260.0), ceiling(240.0))]),
    }
    cell = result["served"]["ensemble"]["16"]
    assert cell["texts_per_s"] == 225.0 and cell["adjacent"]["texts_per_s"] == 250.0  # the median round
    assert [r["texts_per_s"] for r in cell["rounds"]] == [225.0, 180.0, 260.0]
    row = ratios(result)["ensemble"]
    assert row["c16_over_adjacent_ceiling"] == pytest.approx(0.9)  # median of 0.90, 0.90, 1.04
    assert row["c64_over_adjacent_ceiling"] == pytest.approx(1.0)
    assert row["c1_p50_over_adjacent_b1_ms"] == pytest.approx(1.7)
    assert row["c16_over_sorted_ceiling"] == pytest.approx(225 / 200)  # the run's ceiling stays beside it
    result |= {"command": "c", "date": "d", "cores": 2, "cpu_flags": [], "seconds_per_cell": 8, "ratios": ratios(result),
               "texts": {"source": "here", "count": 600, "median_words": 22, "max_words": 67}}
    assert "| 0.90 / 1.00 | 1.7 ms |" in readme_table.render(result)
    for key in ("adjacent", "rounds"):  # a results file from before pairing renders too
        result["served"]["ensemble"]["16"].pop(key)
    assert "| — / 1.00 | 1.7 ms |" in readme_table.render(result | {"ratios": ratios(result)})
    before_rounds = {**result["served"]["ensemble"]["64"], "adjacent": asdict(ceiling(300.0))}
    before_rounds.pop("rounds")  # one served figure and its counterpart, as before rounds
    assert paired({"1": result["served"]["ensemble"]["1"], "16": before_rounds, "64": before_rounds})[
        "c16_over_adjacent_ceiling"] == pytest.approx(240 / 300)


def test_sentences_are_split_and_drawn_without_the_project_texts():
    article = 'The fire crossed the highway at 4:00pm. "It is out," he said. Yes. Crews stayed on overnight!'
    assert bench_texts.split_sentences(article) == [
        "The fire crossed the highway at 4:00pm.", '"It is out," he said.', "Crews stayed on overnight!"]
    sentences = [f"sentence number {i} here" for i in range(20)]
    drawn = bench_texts.draw(sentences + sentences[:5], {"sentence number 3 here"}, count=10, seed=1)
    assert len(set(drawn)) == 10 and "sentence number 3 here" not in drawn
    assert drawn == bench_texts.draw(sentences, {"sentence number 3 here"}, count=10, seed=1)  # reproducible
    with pytest.raises(bench_texts.TextSourceError, match="only 19 usable sentences, 20 wanted"):
        bench_texts.draw(sentences, {"sentence number 3 here"}, count=20)


def test_project_texts_cover_the_shipped_corpus():
    corpus = (REPO / "src" / "hf2triton" / "data" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    assert {line.strip() for line in corpus if line.strip()} <= bench_texts.project_texts()


def test_own_texts_file_and_its_errors(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("first text\n\n  second text  \n")
    assert bench_texts.benchmark_texts(tmp_path, texts) == (["first text", "second text"], str(texts))
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(bench_texts.TextSourceError, match="holds no text"):
        bench_texts.benchmark_texts(tmp_path, tmp_path / "empty.txt")
    with pytest.raises(bench_texts.TextSourceError, match="cannot read --texts"):
        bench_texts.benchmark_texts(tmp_path, tmp_path / "missing.txt")


def test_length_sorted_batches():
    texts = ["ccc", "a", "bb", "dddd", "e"]
    assert batches_of(texts, 2) == [["ccc", "a"], ["bb", "dddd"], ["e"]]
    assert batches_of(texts, 2, [len(t) for t in texts]) == [["a", "e"], ["bb", "ccc"], ["dddd"]]


def test_infinity_is_started_as_design_says(tmp_path):
    command = bench_peers.infinity_command(tmp_path, "optimum", 7997)
    # Run by the venv's python (a moved venv's shebangs are stale); a relative model id.
    assert command[:5] == [str(tmp_path / "bin" / "python"), str(tmp_path / "bin" / "infinity_emb"), "v2",
                           "--model-id", "."]
    assert command[command.index("--pooling-method") + 1] == "mean"  # not its CLS default
    assert command[command.index("--url-prefix") + 1] == "" and "--device" in command
    with pytest.raises(bench_peers.PeerError, match="choose one of optimum, torch"):
        bench_peers.infinity_command(tmp_path, "onnx", 7997)


def test_answer_check_threshold():
    import numpy as np

    same = np.eye(3, dtype=np.float32) + 0.1
    assert np.allclose(bench_peers.cosines(same, same * 2), 1.0)
    assert bench_peers.AnswerCheck(3, 1.0, 0.9995).passed
    assert not bench_peers.AnswerCheck(3, 0.98, 0.23).passed  # CLS pooling of a mean-pooling model


def gpu_visible() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    listed = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                            text=True)
    return listed.returncode == 0 and bool(listed.stdout.strip())


def tensorrt_importable() -> bool:
    return subprocess.run([sys.executable, "-c", "import tensorrt"], capture_output=True).returncode == 0


def test_gpu_check_names_what_is_missing(tmp_path):
    """Check the conditions first, then assert the matching behaviour: it must pass on GPU machines too."""
    gpu, tensorrt = gpu_visible(), tensorrt_importable()
    if gpu and tensorrt:
        pytest.skip("a GPU and TensorRT are here: scripts/gpu_check.sh runs for real (minutes), not in tests")
    env = {**os.environ, "PY": sys.executable, "OUT": str(tmp_path / "out")}
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 2 and "gpu_check: cannot run here; missing:" in done.stderr
    assert ("no NVIDIA GPU is visible" in done.stderr) == (not gpu)
    assert ("TensorRT is not installed" in done.stderr) == (not tensorrt)
    assert "docker compose run --rm builder" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The benchmark's own export of the default model (bench.export_variants), once for this module."""
    import bench

    root = tmp_path_factory.mktemp("bench") / "repository"
    return root, bench.export_variants(root, ["ensemble"])


SAMPLE = ["Short one.", "A senior official confirmed the militia would begin handing over its last bastion on Friday.",
          "Rain has fallen in some parts of the Illawarra, Sydney, the Hunter Valley and the north coast, but the "
          "Bureau of Meteorology says the rain has done little to ease any of the hundred fires still burning.",
          "Crews stayed on overnight."]


def test_in_process_ceiling_answers_like_sentence_transformers(exported):
    """The ceiling must do the served work (tokenize, pad to the longest, run, mean-pool, normalise)."""
    from sentence_transformers import SentenceTransformer

    from bench_ceiling import ceiling_model

    root, checkpoint = exported
    model = ceiling_model(root, "ensemble")
    reference = SentenceTransformer(str(checkpoint), device="cpu").encode(SAMPLE, convert_to_numpy=True)
    assert bench_peers.cosines(model(SAMPLE), reference).min() >= 0.9999
    assert model.lengths(SAMPLE)[0] < model.lengths(SAMPLE)[2]


def test_fused_graph_cell_answers_like_the_plain_graph(exported, tmp_path):
    from bench_ceiling import ceiling_model
    from hf2triton.precision.quantize import fuse_for_cpu

    import bench

    root, checkpoint = exported
    assert bench.attention_shape(checkpoint) == (12, 384)
    fused_file = fuse_for_cpu(root / "ensemble_model" / "1" / "model.onnx", tmp_path / "fused.onnx",
                              *bench.attention_shape(checkpoint))
    plain, fused = ceiling_model(root, "ensemble"), ceiling_model(root, "ensemble", fused_file)
    assert {node.op_type for node in __import__("onnx").load(str(fused_file)).graph.node} >= {"Attention"}
    assert bench_peers.cosines(fused(SAMPLE), plain(SAMPLE)).min() >= 0.9999


def test_a_cell_is_measured_again_while_other_processes_are_busy_and_the_quietest_kept():
    others = iter([50.0, 30.0, 40.0])
    assert quietest("cell", lambda: next(others), float, max_other=25, retries=2) == 30.0  # all busy: quietest
    others = iter([10.0, 99.0])
    assert quietest("cell", lambda: next(others), float, max_other=25, retries=2) == 10.0  # quiet: no retry
    others = iter([50.0, 60.0])
    assert quietest("cell", lambda: next(others), float, max_other=25, retries=0) == 50.0  # no retries left


def test_spin_policy_script_times_every_policy_on_the_served_pipeline(exported, capsys):
    import spin_policy

    root, _ = exported
    assert spin_policy.main([str(root / "ensemble_model" / "1" / "model.onnx"), "--texts", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    policies = [line for line in lines if " p50 " in line]
    assert [line.split(" p50 ")[0].strip() for line in policies] == [
        "default (spin while idle)", "none", f"brief ({spin_policy.onnx_model.SERVED_SPIN_US} µs, served)"]
    assert all(float(line.split("CPU")[1].split("ms")[0]) > 0 for line in policies)


def test_each_ceiling_cell_keeps_the_faster_pass():
    import bench
    from bench_ceiling import InProcess

    before = {"ort_b1": InProcess("ort_b1", 140.0, 7.0, 9.0, 0.0), "ort_b32_sorted": InProcess("ort_b32_sorted", 270.0, 110, 200, 0)}
    after = {"ort_b1": InProcess("ort_b1", 195.0, 4.9, 8.0, 1.0), "ort_b32_sorted": InProcess("ort_b32_sorted", 250.0, 120, 210, 0)}
    kept = bench.faster_cells(before, after)
    assert kept["ort_b1"] is after["ort_b1"] and kept["ort_b32_sorted"] is before["ort_b32_sorted"]


def test_variants_get_the_packed_graph_unless_told_not_to_and_the_packing_script_compares_both_plans(
        tmp_path, capsys):
    import bench
    import packing

    root = tmp_path / "repository"
    bench.export_variants(root, ["fused", "fused_padded", "ensemble_padded"])
    assert (root / "fused" / "1" / packing.onnx_model.PACKED_FILE).is_file()
    assert (root / "ensemble_model" / "1" / packing.onnx_model.PACKED_FILE).is_file()
    assert not (root / "fused_padded" / "1" / packing.onnx_model.PACKED_FILE).exists()
    assert not (root / "ensemble_padded_model" / "1" / packing.onnx_model.PACKED_FILE).exists()
    assert all((p / "config.pbtxt").is_file() for p in root.iterdir() if p.is_dir())  # Triton reads every folder
    assert packing.main([str(root / "fused"), "--seconds", "0.05", "--sizes", "1", "4"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if "random texts per call" in line]
    assert [int(line.split()[0]) for line in rows] == [1, 4]
    assert all(float(line.split("packed ÷ padded")[1]) > 0 for line in rows)
    assert packing.main([str(root / "fused_padded")]) == 2  # no packed graph: says so
    assert "has no packed graph" in capsys.readouterr().out


def test_the_classifier_checkpoint_serves_packed_and_the_packing_script_measures_it(tmp_path, capsys):
    """perf/classifier_checkpoint.py: the default encoder under a two-label head, which
    exports fused with a packed graph that perf/packing.py compares with the padded one."""
    import classifier_checkpoint
    import packing

    from hf2triton.export.checkpoint import inspect_checkpoint
    from hf2triton.pipeline import ExportOptions, export_checkpoint

    folder = classifier_checkpoint.write_classifier(tmp_path / "classifier")
    checkpoint = inspect_checkpoint(folder)
    assert checkpoint.task.name == "sequence-classification" and checkpoint.labels == classifier_checkpoint.LABELS
    result = export_checkpoint(ExportOptions(checkpoint=folder, output_dir=tmp_path / "repository", name="cls"))
    assert result.layout.kind == "fused" and result.layout.onnx_file.with_name(packing.onnx_model.PACKED_FILE).is_file()
    assert packing.main([str(tmp_path / "repository" / "cls"), "--seconds", "0.05", "--sizes", "4"]) == 0
    assert "packed ÷ padded" in capsys.readouterr().out


def test_the_reranker_checkpoint_is_a_one_label_cross_encoder(tmp_path):
    import classifier_checkpoint

    from hf2triton.export.checkpoint import inspect_checkpoint

    checkpoint = inspect_checkpoint(classifier_checkpoint.write_classifier(tmp_path / "reranker", reranker=True))
    assert checkpoint.task.name == "rerank"


def test_measurement_scripts_read_the_cached_benchmark_sentences_or_the_corpus_without_downloading(tmp_path):
    from bench_texts import cached_file, cached_or_corpus

    from hf2triton.perf.corpus import load_texts

    assert cached_or_corpus(tmp_path) == load_texts()  # nothing fetched yet: the shipped corpus
    cached_file(tmp_path).write_text("first sentence\nsecond sentence\n", encoding="utf-8")
    assert cached_or_corpus(tmp_path) == ["first sentence", "second sentence"]
