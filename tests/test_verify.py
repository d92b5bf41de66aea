"""``hf2triton verify`` against the shared real server: passes on what was exported, fails
(exit 1, the mismatching texts named) when pointed at a different checkpoint."""

import subprocess
import sys

import pytest

from conftest import DEFAULT, NER, SENTIMENT, TOPICS
from hf2triton.export.parity import VERIFY_TEXTS
from hf2triton.client.verify import Tolerance, checkpoint_from_manifest, verify

pytestmark = pytest.mark.e2e


def run_verify(server, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "hf2triton.cli", "verify", "--grpc-url", server.grpc_url,
               "--http-url", server.http_url, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_verify_passes_for_the_default_model_with_the_checkpoint_from_the_manifest(server, repository):
    root, results = repository
    assert checkpoint_from_manifest(root, DEFAULT) == results[DEFAULT].checkpoint.path
    result = run_verify(server, "--model", DEFAULT, "--model-repository", str(root))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    # header, one line per text and protocol (twice: as is, and with half the dimensions), summary
    assert len(lines) == 1 + 4 * len(VERIFY_TEXTS) + 1
    assert lines[-1].startswith(f"verify passed: {4 * len(VERIFY_TEXTS)}/{4 * len(VERIFY_TEXTS)} answers")
    assert sum("dimensions=192: cosine" in line for line in lines) == 2 * len(VERIFY_TEXTS)
    assert all(" ok " in line and ("cosine 0.9999" in line or "cosine 1.0000" in line) for line in lines[1:-1])


@pytest.mark.parametrize("model", [SENTIMENT, TOPICS, NER])
def test_verify_passes_for_classifiers_and_ner(server, repository, model):
    root, results = repository
    report = verify(model, results[model].checkpoint.path, {"grpc": server.grpc_url, "http": server.http_url})
    assert report.passed, "\n".join(report.table())
    runs = 2 if model in (SENTIMENT, TOPICS) else 1  # classifiers: texts alone, and text pairs
    assert len(report.checks) == 2 * runs * (len(VERIFY_TEXTS) - len(report.skipped))
    assert report.skipped == ((4,) if model == TOPICS else ())  # the long text is over its 2000-byte limit
    assert report.task == results[model].checkpoint.task.name


def test_verify_fails_for_another_ner_checkpoint(server, tmp_path):
    import checkpoints

    other = checkpoints.tiny_encoder(tmp_path / "other-ner", "bert", "token-classification", seed=1)
    result = run_verify(server, "--model", NER, "--checkpoint", str(other), "--protocol", "grpc")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "MISMATCH" in result.stdout and result.stdout.strip().splitlines()[-1].startswith("verify FAILED")


def test_verify_fails_for_a_different_embedding_model(server, tiny_checkpoint, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("first text\nsecond text, with ünïcode 🎉\n")
    report = verify(DEFAULT, tiny_checkpoint("bert", "embeddings"), {"http": server.http_url},
                    texts=("first text", "second text"), tolerance=Tolerance())
    assert not report.passed
    assert all("dimension 384 served, 32 expected" in check.detail for check in report.checks)
    result = run_verify(server, "--model", DEFAULT, "--checkpoint", str(tiny_checkpoint("bert", "embeddings")),
                        "--texts", str(texts))
    assert result.returncode == 1 and result.stdout.count("MISMATCH") == 4


def test_verify_without_a_checkpoint_says_what_to_pass(server):
    result = run_verify(server, "--model", SENTIMENT)
    assert result.returncode == 2
    assert "pass --checkpoint, or --model-repository" in result.stderr and "Traceback" not in result.stderr
