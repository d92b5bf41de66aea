"""``hf2triton check`` against plan sidecars written here (no TensorRT or GPU on these machines)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hf2triton.engines.check import check_repository
from hf2triton.engines.environment import (RELEASE_TENSORRT, ServingEnvironment, detect_environment,
                                           pinned_release, tensorrt_runtime_version, visible_gpus)
from hf2triton.errors import CompatibilityError, MissingDependencyError

ROOT = Path(__file__).resolve().parent.parent
A10 = ServingEnvironment("10.8.0.43", ("8.6",), ("NVIDIA A10G",))


def write_plan(repository: Path, model: str, name: str = "model.plan", **record) -> Path:
    version = repository / model / "1"
    version.mkdir(parents=True, exist_ok=True)
    plan = version / name
    plan.write_bytes(b"not a real engine")
    if record:
        (version / f"{name}.json").write_text(json.dumps(record))
    return plan


def plan_record(trt: str = "10.8.0.43", cc: str = "8.6", release: str = "25.01") -> dict:
    return {"tensorrt_version": trt, "compute_capability": cc, "triton_release": release, "gpu_name": "NVIDIA A10G"}


def test_matching_plans_pass(tmp_path):
    write_plan(tmp_path, "m_model", **plan_record())
    report = check_repository(tmp_path, A10, "25.01")
    assert len(report.plans) == 1
    assert "compatible with TensorRT 10.8.0.43, GPU compute capability 8.6, release 25.01" in report.summary()


def test_libnvinfer_version_without_build_number_matches(tmp_path):
    write_plan(tmp_path, "m_model", **plan_record())
    check_repository(tmp_path, ServingEnvironment("10.8.0", ("8.6",)), "25.01")


def test_every_mismatch_is_listed_at_once(tmp_path):
    write_plan(tmp_path, "a_model", **plan_record(trt="10.5.0.18", release="24.10"))
    write_plan(tmp_path, "b_model", **plan_record(cc="8.0"))
    write_plan(tmp_path, "c_model")  # no sidecar
    (tmp_path / "d_model" / "1").mkdir(parents=True)
    (tmp_path / "d_model" / "1" / "model.plan").write_bytes(b"x")
    (tmp_path / "d_model" / "1" / "model.plan.json").write_text('{"tensorrt_version": "10.8.0"}')
    with pytest.raises(CompatibilityError) as caught:
        check_repository(tmp_path, A10, "25.01")
    message = str(caught.value)
    assert "a_model/1/model.plan: built with TensorRT 10.5.0.18, but release 25.01 (TRITON_VERSION) serves TensorRT 10.8" in message
    assert "a_model/1/model.plan: built for release 24.10, but the pinned release is 25.01" in message
    assert "a_model/1/model.plan: built with TensorRT 10.5.0.18, but this environment has TensorRT 10.8.0.43" in message
    assert "b_model: plans built for compute capability 8.0, but this machine's GPU(s) are 8.6" in message
    assert "c_model/1/model.plan: no model.plan.json records the TensorRT version" in message
    assert "d_model/1/model.plan: model.plan.json is unreadable or lacks" in message
    assert message.startswith("6 problem(s)")


def test_several_gpus_need_a_plan_each(tmp_path):
    """cc_model_filenames: one plan per compute capability in one model folder."""
    write_plan(tmp_path, "m_model", "model_sm86.plan", **plan_record(cc="8.6"))
    two_gpus = ServingEnvironment("10.8.0.43", ("8.6", "8.9"))
    with pytest.raises(CompatibilityError, match="GPU\\(s\\) are 8.9"):
        check_repository(tmp_path, two_gpus, "25.01")
    write_plan(tmp_path, "m_model", "model_sm89.plan", **plan_record(cc="8.9"))
    assert len(check_repository(tmp_path, two_gpus, "25.01").plans) == 2


def test_offline_checks_the_release_only(tmp_path):
    write_plan(tmp_path, "m_model", **plan_record())
    assert check_repository(tmp_path, None, "25.01").environment is None
    with pytest.raises(CompatibilityError, match="serves TensorRT 10.5"):
        check_repository(tmp_path, None, "24.10")


def test_pinned_release_is_in_the_release_table():
    from deploy_files import read_env_file

    assert read_env_file()["TRITON_VERSION"] in RELEASE_TENSORRT


def test_pinned_release_comes_from_the_environment_then_the_env_file(tmp_path, monkeypatch):
    for variable in ("TRITON_VERSION", "NVIDIA_TRITON_SERVER_VERSION"):
        monkeypatch.delenv(variable, raising=False)
    env_file = tmp_path / ".env"
    assert pinned_release(env_file) is None
    env_file.write_text("# pinned\nTRITON_VERSION=24.12\n")
    assert pinned_release(env_file) == "24.12"
    monkeypatch.setenv("NVIDIA_TRITON_SERVER_VERSION", "25.02")  # inside the NGC container
    assert pinned_release(env_file) == "25.02"
    monkeypatch.setenv("TRITON_VERSION", "25.03")
    assert pinned_release(env_file) == "25.03"


def test_no_gpu_here_is_a_clear_message():
    # Check the condition first: on a GPU machine (with or without TensorRT) the message differs.
    gpus, tensorrt = visible_gpus(), tensorrt_runtime_version()
    if gpus and tensorrt:
        assert detect_environment().compute_capabilities == tuple(gpu.compute_capability for gpu in gpus)
        return
    missing = "no NVIDIA GPU is visible" if not gpus else "no TensorRT runtime"
    with pytest.raises(MissingDependencyError, match=f"{missing} .* --offline"):
        detect_environment()


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hf2triton.cli", "check", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")})


def test_cli(tmp_path):
    write_plan(tmp_path, "m_model", **plan_record(release="24.10", trt="10.5.0.18"))
    no_gpu = run_cli("--model-repository", str(tmp_path))
    if not visible_gpus():  # the condition first: GPU machines answer otherwise
        assert no_gpu.returncode == 2 and "no NVIDIA GPU is visible" in no_gpu.stderr
    assert "Traceback" not in no_gpu.stderr
    refused = run_cli("--model-repository", str(tmp_path), "--offline")  # release from ./.env: 25.01
    assert refused.returncode == 2 and "but release 25.01 (TRITON_VERSION) serves TensorRT 10.8" in refused.stderr
    accepted = run_cli("--model-repository", str(tmp_path), "--offline", "--release", "24.10")
    assert accepted.returncode == 0, accepted.stderr
    assert "1 TensorRT plan(s) are compatible with the pinned release only" in accepted.stdout
    empty = run_cli("--model-repository", str(tmp_path / "m_model" / "0"), "--offline")
    assert empty.returncode == 2 and "does not exist" in empty.stderr


def test_cli_without_plans_has_nothing_to_check(tmp_path):
    done = run_cli("--model-repository", str(tmp_path))
    assert done.returncode == 0 and "nothing to check" in done.stdout
