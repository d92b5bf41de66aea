"""The engine builder's control flow, run against a small test double of the TensorRT API.

No GPU or TensorRT exists on these machines, so this is a unit test of how
hf2triton drives the API (flags per TensorRT version, parser errors, profiles,
timing cache, sidecar) — not a check that real engines build.
"""

import json
import types
from pathlib import Path

import pytest

from hf2triton.engines.build import EngineSpec, build_engine, network_flags, shape_profiles
from hf2triton.engines.check import check_repository
from hf2triton.engines.environment import GpuInfo, ServingEnvironment
from hf2triton.engines.record import PlanRecord
from hf2triton.errors import CompatibilityError, ExportError


class Recorder:
    def __init__(self):
        self.calls = []


def fake_tensorrt(version: str, parse_ok: bool = True, build_ok: bool = True, recorder: Recorder | None = None):
    """The subset of the ``tensorrt`` module the builder uses, recording every call."""
    rec = recorder or Recorder()

    class Enum:
        def __init__(self, **members):
            self.__dict__.update(members)

    class Parser:
        def __init__(self, network, logger):
            self.num_errors = 0 if parse_ok else 2

        def parse_from_file(self, path):
            rec.calls.append(("parse", Path(path).name))
            return parse_ok

        def get_error(self, i):
            return f"node {i}: unsupported operator"

    class Profile:
        def set_shape(self, name, low, opt, high):
            rec.calls.append(("shape", name, low, opt, high))

    class Cache:
        def serialize(self):
            return b"timing-cache"

    class Config:
        def set_memory_pool_limit(self, pool, size):
            rec.calls.append(("pool", pool, size))

        def set_flag(self, flag):
            rec.calls.append(("flag", flag))

        def add_optimization_profile(self, profile):
            rec.calls.append(("profile",))

        def create_timing_cache(self, data):
            rec.calls.append(("cache-in", bytes(data)))
            return Cache()

        def set_timing_cache(self, cache, ignore_mismatch):
            rec.calls.append(("cache-set", ignore_mismatch))

        def get_timing_cache(self):
            return Cache()

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            rec.calls.append(("network", flags))
            return object()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"PLAN" if build_ok else None

    creation = {"EXPLICIT_BATCH": 0}
    if version.split(".")[0] in ("10", "11"):
        creation["STRONGLY_TYPED"] = 1
    module = types.SimpleNamespace(
        __version__=version,
        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, level: None}),
        Builder=Builder,
        OnnxParser=Parser,
        NetworkDefinitionCreationFlag=Enum(**creation),
        MemoryPoolType=Enum(WORKSPACE="workspace"),
        BuilderFlag=Enum(FP16="fp16", INT8="int8"),
    )
    return module, rec


def spec(tmp_path, precision="int8", per_bucket=False) -> EngineSpec:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"onnx")
    return EngineSpec(onnx_file, tmp_path / "out" / "model.plan", precision, ("input_ids", "attention_mask"),
                      max_batch_size=32, buckets=(16, 32, 64, 128), per_bucket_profiles=per_bucket,
                      timing_cache=tmp_path / "timing.cache")


GPU = GpuInfo("NVIDIA L4", "8.9")


@pytest.mark.parametrize("version, flags, precision_flags", [
    ("11.1.0", 0, False),           # strongly typed is the only mode
    ("10.9.0", 1 << 1, False),      # strongly typed by flag
    ("8.6.1", 1 << 0, True),        # explicit batch + FP16/INT8 builder flags
])
def test_network_flags_per_tensorrt_version(version, flags, precision_flags):
    trt, _ = fake_tensorrt(version)
    assert network_flags(trt) == (flags, precision_flags)


def test_build_writes_plan_sidecar_and_timing_cache(tmp_path):
    trt, rec = fake_tensorrt("10.9.0")
    info = build_engine(spec(tmp_path), trt, GPU, release="25.03")
    plan = tmp_path / "out" / "model.plan"
    assert plan.read_bytes() == b"PLAN"
    sidecar = json.loads((tmp_path / "out" / "model.plan.json").read_text())
    assert sidecar["tensorrt_version"] == "10.9.0" and sidecar["compute_capability"] == "8.9"
    assert sidecar["precision"] == "int8" and sidecar["triton_release"] == "25.03" and info.gpu_name == "NVIDIA L4"
    assert PlanRecord.read(plan) == info, "hf2triton check reads back exactly what the builder wrote"
    assert (tmp_path / "timing.cache").read_bytes() == b"timing-cache"
    assert ("pool", "workspace", 4 << 30) in rec.calls
    assert not [c for c in rec.calls if c[0] == "flag"], "strongly typed networks take no precision flags"
    shapes = [c for c in rec.calls if c[0] == "shape"]
    assert ("shape", "input_ids", (1, 1), (16, 64), (32, 128)) in shapes


def test_old_tensorrt_gets_precision_flags(tmp_path):
    trt, rec = fake_tensorrt("8.6.1")
    build_engine(spec(tmp_path, "int8"), trt, GPU)
    assert ("flag", "fp16") in rec.calls and ("flag", "int8") in rec.calls


def test_timing_cache_is_reused(tmp_path):
    (tmp_path / "timing.cache").write_bytes(b"earlier")
    trt, rec = fake_tensorrt("11.1.0")
    build_engine(spec(tmp_path), trt, GPU)
    assert ("cache-in", b"earlier") in rec.calls


def test_parser_errors_are_listed(tmp_path):
    trt, _ = fake_tensorrt("10.9.0", parse_ok=False)
    with pytest.raises(ExportError, match="node 0: unsupported operator; node 1: unsupported operator"):
        build_engine(spec(tmp_path), trt, GPU)
    assert not (tmp_path / "out" / "model.plan").exists()


def test_failed_build_is_an_error(tmp_path):
    trt, _ = fake_tensorrt("10.9.0", build_ok=False)
    with pytest.raises(ExportError, match="failed to build"):
        build_engine(spec(tmp_path), trt, GPU)


def test_one_profile_per_bucket(tmp_path):
    profiles = shape_profiles(spec(tmp_path, per_bucket=True))
    assert [p["input_ids"][2][1] for p in profiles] == [16, 32, 64, 128]
    assert [p["input_ids"][0][1] for p in profiles] == [1, 17, 33, 65]


def test_tensorrt_flavour_lists_one_plan_per_gpu_with_its_sidecar(tmp_path):
    from hf2triton.repository import ServingOptions, model_step_files
    from hf2triton.repository import PythonModel, Tensor

    plans = {}
    for capability in ("8.6", "8.9"):
        plan = tmp_path / capability / "model.plan"
        plan.parent.mkdir()
        plan.write_bytes(b"PLAN")
        plan.with_name("model.plan.json").write_text("{}")
        plans[capability] = plan
    step = PythonModel("m_model", (Tensor("input_ids", "TYPE_INT64", (-1,)),),
                       (Tensor("logits", "TYPE_FP32", (3,)),), 8)
    config, files = model_step_files(step, tmp_path / "unused.onnx", ServingOptions(backend="tensorrt"), plans)
    assert config.platform == "tensorrt_plan"
    assert dict(config.cc_model_filenames) == {"8.6": "model.sm86.plan", "8.9": "model.sm89.plan"}
    assert files["model.sm89.plan.json"] == plans["8.9"].with_name("model.plan.json")
    assert set(files) == {"model.sm86.plan", "model.sm86.plan.json", "model.sm89.plan", "model.sm89.plan.json"}


def built_repository(tmp_path: Path, release: str | None, version: str = "10.8.0.43") -> Path:
    """A repository holding one plan written by the builder (TensorRT test double)."""
    trt, _ = fake_tensorrt(version)
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"onnx")
    plan = tmp_path / "repo" / "m_model" / "1" / "model.plan"
    build_engine(EngineSpec(onnx_file, plan, "fp16", ("input_ids",), 8, (16, 32)), trt, GpuInfo("NVIDIA A10G", "8.6"),
                 release=release)
    return tmp_path / "repo"


def test_release_check_fires_for_a_builder_written_record(tmp_path):
    repository = built_repository(tmp_path, "25.01")
    a10 = ServingEnvironment("10.8.0.43", ("8.6",), ("NVIDIA A10G",))
    assert len(check_repository(repository, a10, "25.01").plans) == 1
    with pytest.raises(CompatibilityError, match="built for release 25.01, but the pinned release is 25.02"):
        check_repository(repository, a10, "25.02")  # same TensorRT 10.8: only the release stamp tells


def test_builder_stamps_the_pinned_release(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_VERSION", "24.12")
    repository = built_repository(tmp_path, None, version="10.7.0.23")
    assert PlanRecord.read(repository / "m_model" / "1" / "model.plan").triton_release == "24.12"
    with pytest.raises(CompatibilityError, match="built for release 24.12"):
        check_repository(repository, None, "25.01")
