"""perf/ for the Triton SDK container: input-data JSON, sweep scripts, Model Analyzer config."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import DEFAULT
from hf2triton.perf.inputs import InputDataError, text_input_data, validate_input_data

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*REPO.glob("perf/*.sh"), *REPO.glob("scripts/*.sh"), *REPO.glob("client/*.sh")])


def run_generator(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "perf" / "make_input_data.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_text_input_data_from_the_corpus_validates(tmp_path):
    output = tmp_path / "text.json"
    done = run_generator("--count", "50", "--min-words", "3", "--max-words", "40", "-o", str(output))
    assert done.returncode == 0, done.stderr
    document = json.loads(output.read_text(encoding="utf-8"))
    validate_input_data(document, required_inputs=["TEXT"])
    steps = document["data"]
    assert len(steps) == 50
    assert all(list(step) == ["TEXT"] and len(step["TEXT"]) == 1 for step in steps)
    assert all(3 <= len(step["TEXT"][0].split()) <= 40 for step in steps)
    assert len({step["TEXT"][0] for step in steps}) > 40  # real, varied text


def test_token_input_data_for_the_model_step_validates(repository, tmp_path):
    root, _ = repository
    tokens = tmp_path / "tokens.json"
    done = run_generator("--count", "8", "-o", str(tmp_path / "text.json"), "--repository", str(root),
                         "--model", DEFAULT, "--tokens-output", str(tokens))
    assert done.returncode == 0, done.stderr
    document = json.loads(tokens.read_text())
    validate_input_data(document, required_inputs=["input_ids", "attention_mask", "token_type_ids"])
    first = document["data"][0]["input_ids"]
    assert first["content"][0] == 101 and first["shape"] == [len(first["content"])]  # [CLS] ...


def test_generator_reports_a_missing_text_file(tmp_path):
    done = run_generator("--texts", str(tmp_path / "missing.txt"), "-o", str(tmp_path / "x.json"))
    assert done.returncode == 2 and "error:" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("document, problem", [
    ({}, "at least one step"),
    ({"data": [{"TEXT": []}]}, "empty list"),
    ({"data": [{"input_ids": {"content": [1, 2, 3], "shape": [2]}}]}, "content has 3"),
    ({"data": [{"TEXT": "not a list"}]}, "must be a list"),
])
def test_validator_names_each_problem(document, problem):
    with pytest.raises(InputDataError, match=problem):
        validate_input_data(document)


def test_validator_requires_named_inputs():
    with pytest.raises(InputDataError, match="lacks input 'TEXT'"):
        validate_input_data({"data": [{"text": ["lower case"]}]}, required_inputs=["TEXT"])
    validate_input_data(text_input_data(["a", "b"]), required_inputs=["TEXT"])


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shell_scripts_parse(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shell_scripts_pass_shellcheck():
    done = subprocess.run(["shellcheck", *map(str, SCRIPTS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_sweep_script_covers_every_step_protocol_and_mode():
    text = (REPO / "perf" / "sweep.sh").read_text()
    for needle in ("--concurrency-range", "--request-rate-range", "--collect-metrics", "-f \"$csv\"",
                   "--stability-percentage", "--measurement-mode time_windows", "grpc http",
                   "ensemble tokenizer model postprocess"):
        assert needle in text


def test_model_analyzer_config_parses_and_targets_the_ensemble():
    config = yaml.safe_load((REPO / "perf" / "model_analyzer.yaml").read_text())
    assert DEFAULT in config["profile_models"]
    assert config["run_config_search_mode"] == "quick"
    assert config["objectives"]["perf_throughput"] > 0
    assert config["constraints"]["perf_latency_p99"]["max"] > 0
    assert config["perf_analyzer_flags"]["input-data"].endswith("perf/data/text.json")
    assert set(config["cpu_only_composing_models"]) == {f"{DEFAULT}_tokenizer", f"{DEFAULT}_postprocess"}
