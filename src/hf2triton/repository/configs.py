"""Triton model configs built as protobuf (``model_config_pb2.ModelConfig``), never templates.

Small dataclasses describe each kind of model in the repository; ``build_*``
turns them into protobuf, where a misspelt field fails loudly, and ``to_pbtxt``
/ ``parse_pbtxt`` convert to and from the text Triton reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from hf2triton.errors import OptionsError


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # DataType enum name, e.g. "TYPE_INT64"
    dims: tuple[int, ...]
    ragged: bool = False  # an input whose requests Triton may batch whatever their shapes
    optional: bool = False  # an input a request may leave out (TEXT_PAIR)

    def __post_init__(self):
        if self.data_type not in pb.DataType.keys():
            raise ValueError(f"tensor {self.name}: unknown data type {self.data_type!r}")


@dataclass(frozen=True)
class Batching:
    """Dynamic batching: merge queued requests of equal shape, waiting at most this long."""

    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()


VERSION_POLICY_KINDS = ("latest", "specific", "all")


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model Triton serves: the newest ``count``, listed ones, or all.

    Written as ``latest:N``, ``specific:V[,V...]`` or ``all`` on the command line.
    """

    kind: str = "latest"
    latest: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self):
        if self.kind not in VERSION_POLICY_KINDS:
            raise OptionsError(f"version policy must be one of {', '.join(VERSION_POLICY_KINDS)}, not {self.kind!r}")
        if self.kind == "latest" and self.latest < 1:
            raise OptionsError(f"version policy latest:N needs N >= 1, not {self.latest}")
        if self.kind == "specific" and (not self.versions or min(self.versions) < 1):
            raise OptionsError("version policy specific:V[,V...] needs versions >= 1")

    @classmethod
    def parse(cls, text: str) -> "VersionPolicy":
        kind, _, argument = text.strip().partition(":")
        if kind in ("latest", "specific"):
            try:  # parse first: the constructor's own OptionsError is a ValueError too
                numbers = [int(v) for v in (argument or "1").split(",") if v.strip()]
            except ValueError:
                raise OptionsError(f"version policy {text!r}: versions must be whole numbers") from None
            if kind == "latest" and len(numbers) == 1:
                return cls("latest", latest=numbers[0])
            if kind == "specific":
                return cls("specific", versions=tuple(sorted(set(numbers))) if argument else ())
        if kind == "all" and not argument:
            return cls("all")
        raise OptionsError(f"version policy {text!r} is not latest:N, specific:V[,V...] or all")

    def __str__(self) -> str:
        if self.kind == "latest":
            return f"latest:{self.latest}"
        if self.kind == "specific":
            return "specific:" + ",".join(str(v) for v in self.versions)
        return "all"


@dataclass(frozen=True)
class WarmupSample:
    """One ``model_warmup`` entry: zero-filled inputs of these shapes (without the batch axis)."""

    name: str
    inputs: tuple[Tensor, ...]
    batch_size: int = 1


@dataclass(frozen=True)
class PythonModel:
    """A python-backend model (tokenizer, ONNX Runtime model step, postprocess)."""

    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int
    instance_count: int = 1
    batching: Batching = Batching()
    parameters: dict[str, str] = field(default_factory=dict)
    version_policy: VersionPolicy = VersionPolicy()
    warmup: tuple[WarmupSample, ...] = ()


@dataclass(frozen=True)
class PlatformModel:
    """A model step run by a Triton backend of the container: ONNX Runtime or TensorRT.

    ``platform`` is "onnxruntime_onnx" or "tensorrt_plan". The instance kind is left to
    Triton (GPU where there is one, else CPU), so one repository serves both.
    """

    name: str
    platform: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int
    default_model_filename: str
    instance_count: int = 1
    batching: Batching = Batching()
    cc_model_filenames: dict[str, str] = field(default_factory=dict)  # compute capability -> plan
    ort_tensorrt_precision: str | None = None  # "FP16"/"FP32": ORT's TensorRT execution provider
    version_policy: VersionPolicy = VersionPolicy()
    warmup: tuple[WarmupSample, ...] = ()

    def __post_init__(self):
        if self.platform not in ("onnxruntime_onnx", "tensorrt_plan"):
            raise ValueError(f"model {self.name}: unsupported platform {self.platform!r}")
        if self.ort_tensorrt_precision and self.platform != "onnxruntime_onnx":
            raise ValueError(f"model {self.name}: the TensorRT execution provider is an ONNX Runtime option")


@dataclass(frozen=True)
class EnsembleStep:
    model: str
    input_map: dict[str, str]  # the step model's input name -> ensemble tensor
    output_map: dict[str, str]  # the step model's output name -> ensemble tensor


@dataclass(frozen=True)
class Ensemble:
    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    max_batch_size: int
    steps: tuple[EnsembleStep, ...]
    parameters: dict[str, str] = field(default_factory=dict)
    version_policy: VersionPolicy = VersionPolicy()


def _tensor(message, tensor: Tensor) -> None:
    message.name = tensor.name
    message.data_type = pb.DataType.Value(tensor.data_type)
    message.dims.extend(tensor.dims)
    if tensor.ragged:
        message.allow_ragged_batch = True
    if tensor.optional:
        message.optional = True


def _io(config: pb.ModelConfig, inputs, outputs) -> None:
    for tensor in inputs:
        _tensor(config.input.add(), tensor)
    for tensor in outputs:
        _tensor(config.output.add(), tensor)


def _parameters(config: pb.ModelConfig, parameters: dict[str, str]) -> None:
    for key, value in parameters.items():
        config.parameters[key].string_value = value


def _version_policy(config: pb.ModelConfig, policy: VersionPolicy) -> None:
    if policy.kind == "latest":
        config.version_policy.latest.num_versions = policy.latest
    elif policy.kind == "specific":
        config.version_policy.specific.versions.extend(policy.versions)
    else:
        config.version_policy.all.SetInParent()


def _warmup(config: pb.ModelConfig, samples: tuple[WarmupSample, ...]) -> None:
    for sample in samples:
        message = config.model_warmup.add(name=sample.name, batch_size=sample.batch_size)
        for tensor in sample.inputs:
            data = message.inputs[tensor.name]
            data.data_type = pb.DataType.Value(tensor.data_type)
            data.dims.extend(tensor.dims)
            data.zero_data = True


def build_python_model(model: PythonModel) -> pb.ModelConfig:
    config = pb.ModelConfig(name=model.name, backend="python", max_batch_size=model.max_batch_size)
    _io(config, model.inputs, model.outputs)
    config.dynamic_batching.max_queue_delay_microseconds = model.batching.max_queue_delay_us
    config.dynamic_batching.preferred_batch_size.extend(model.batching.preferred_batch_sizes)
    group = config.instance_group.add(count=model.instance_count)
    group.kind = pb.ModelInstanceGroup.KIND_CPU
    _parameters(config, model.parameters)
    _version_policy(config, model.version_policy)
    _warmup(config, model.warmup)
    return config


def build_platform_model(model: PlatformModel) -> pb.ModelConfig:
    config = pb.ModelConfig(
        name=model.name,
        platform=model.platform,
        max_batch_size=model.max_batch_size,
        default_model_filename=model.default_model_filename,
    )
    _io(config, model.inputs, model.outputs)
    config.dynamic_batching.max_queue_delay_microseconds = model.batching.max_queue_delay_us
    config.dynamic_batching.preferred_batch_size.extend(model.batching.preferred_batch_sizes)
    config.instance_group.add(count=model.instance_count)
    config.cc_model_filenames.update(model.cc_model_filenames)
    if model.ort_tensorrt_precision:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = model.ort_tensorrt_precision
        accelerator.parameters["max_workspace_size_bytes"] = str(4 << 30)
    _version_policy(config, model.version_policy)
    _warmup(config, model.warmup)
    return config


def build_ensemble(ensemble: Ensemble) -> pb.ModelConfig:
    config = pb.ModelConfig(name=ensemble.name, platform="ensemble", max_batch_size=ensemble.max_batch_size)
    _io(config, ensemble.inputs, ensemble.outputs)
    for step in ensemble.steps:
        message = config.ensemble_scheduling.step.add(model_name=step.model, model_version=-1)
        message.input_map.update(step.input_map)
        message.output_map.update(step.output_map)
    _parameters(config, ensemble.parameters)
    _version_policy(config, ensemble.version_policy)
    return config


def to_pbtxt(config: pb.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_pbtxt(text: str) -> pb.ModelConfig:
    return text_format.Parse(text, pb.ModelConfig())
