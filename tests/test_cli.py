"""The command line as users meet it: a fast parser, and one-line errors (exit 2) for mistakes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hf2triton.cli import build_parser, main
from hf2triton.cli.library import LibraryChoices, LibraryDefault

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "onnx", "onnxruntime", "tritonclient")


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hf2triton.cli", *args], capture_output=True, text=True,
                          input=stdin, cwd=ROOT, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src"), "HOME": "/tmp"})


def test_building_the_parser_imports_no_heavy_library():
    probe = ("import sys; from hf2triton.cli import build_parser; build_parser(); "
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_help_shows_the_library_defaults_and_choices():
    help_text = run_cli("export", "--help").stdout
    for shown in ("python-ort, onnxruntime, tensorrt", "(default: python-ort)", "ensemble, fused",
                  "(default: latest:1)", "(default: 65536)", "(default: 17)", "(default: 2)", "(default: 32)"):
        assert shown in " ".join(help_text.split()), shown


def test_library_defaults_are_not_passed_unless_set():
    args = build_parser().parse_args(["export", "--model-instances", "3"])
    assert args.model_instances == 3 and isinstance(args.max_batch_size, LibraryDefault)
    assert str(LibraryDefault("hf2triton.serving.config:ServerConfig", "grpc_port")) == "8001"
    assert "explicit" in LibraryChoices("hf2triton.serving.config:MODEL_CONTROL_MODES")


def test_preferred_batch_sizes_from_the_command_line():
    from hf2triton.cli.export import serving_options

    def preferred(*flags: str):
        return serving_options(build_parser().parse_args(["export", *flags])).model_batch_sizes(32)

    assert preferred() == (8, 16, 32)  # the library's default: the instances share a long queue
    assert preferred("--preferred-batch-size") == ()  # the flag alone: none
    assert preferred("--preferred-batch-size", "4", "12") == (4, 12)


# One line on stderr and exit status 2 for each user mistake, in each command.
MISTAKES = [
    (("serve", "--http-port", "70000"), "http_port must be in 0..65535, not 70000"),
    (("serve", "--http-port", "8000", "--grpc-port", "8000"), "ports must differ"),
    (("serve", "--model-control-mode", "sometimes"), "invalid choice: 'sometimes'"),
    (("serve", "--model-repository", "/nonexistent"), "model repository /nonexistent does not exist"),
    (("infer", "--url", "ftp://x:1", "hello"), "url must be host:port, http://host:port or https://host:port"),
    (("infer", "--url", "https://x:99999", "hello"), "port in 1..65535"),
    (("infer", "--protocol", "smtp", "hello"), "invalid choice: 'smtp'"),
    (("export", "/nonexistent/checkpoint"), "checkpoint directory /nonexistent/checkpoint does not exist"),
    (("export", "--precision", "fp32,int4"), "--precision must include fp32 and only fp32, fp16, int8"),
    (("export", "--precision", "int8"), "--precision must include fp32"),
    (("export", "--min-agreement", "0"), "--min-agreement must be in (0, 1]"),
    (("export", "--min-agreement", "1.01"), "--min-agreement must be in (0, 1]"),
    (("export", "--calibration-data", "/nonexistent.txt", "--precision", "fp32,int8"), "is not a file"),
    (("export", "--version-policy", "newest"), "--version-policy: version policy 'newest' is not latest:N"),
    (("export", "--version-policy", "latest:0"), "latest:N needs N >= 1"),
    (("export", "--backend", "tensorflow"), "invalid choice: 'tensorflow'"),
    (("export", "--layout", "fused", "--backend", "onnxruntime"), "the fused layout is one python model"),
    (("export", "--engines"), "--engines needs --precision fp16 and/or int8"),
    (("export", "--name", "bad name!"), "model name 'bad name!' is invalid"),
    (("verify",), "pass --checkpoint, or --model-repository"),
    (("check", "--model-repository", "/nonexistent", "--offline"), "model repository /nonexistent does not exist"),
    (("perf", "--concurrency", "0"), "concurrencies must be >= 1"),
    (("demo", "--model-repository", "/nonexistent"), "/nonexistent holds no model 'all_minilm_l6_v2'"),
    (("launch",), "invalid choice: 'launch'"),
]


@pytest.mark.parametrize("args, message", MISTAKES[:5], ids=[" ".join(a) for a, _ in MISTAKES[:5]])
def test_mistakes_in_a_fresh_process_end_in_one_line(args, message):
    done = run_cli(*args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()], "one line, no traceback"
    assert done.stderr.startswith("error: ") and message in done.stderr


@pytest.mark.parametrize("args, message", MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_each_command_ends_a_mistake_with_status_2(args, message, capsys):
    try:
        status = main(list(args))
    except SystemExit as exit_:  # argparse's own errors
        status = exit_.code
    err = capsys.readouterr().err
    assert status == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in err


@pytest.mark.e2e
@pytest.mark.slow
def test_quickstart_path_export_then_demo(tmp_path, tiny_checkpoint):
    """scripts/quickstart.sh's two steps (export, then `hf2triton demo`) on a tiny checkpoint."""
    repository = tmp_path / "model_repository"
    exported = subprocess.run([sys.executable, "build/export.py", str(tiny_checkpoint("bert")), "-o", str(repository),
                               "-n", "tiny"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert exported.returncode == 0, exported.stderr
    demo = subprocess.run([sys.executable, "-m", "hf2triton.cli", "demo", "--model-repository", str(repository),
                           "--model", "tiny", "A fine-tuned transformer, served by Triton."],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert demo.returncode == 0, demo.stderr
    lines = demo.stdout.splitlines()
    assert lines[0].startswith("tritonserver ready (gRPC 127.0.0.1:")
    assert lines[1] == "model 'tiny': task sequence-classification, max batch 32"
    assert lines[2].startswith("'A fine-tuned transformer, served by Triton.': ")  # label (score) [scores]
    assert "Traceback" not in demo.stderr
