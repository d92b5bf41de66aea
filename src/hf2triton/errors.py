"""The exceptions hf2triton raises.

Every error the library raises on purpose derives from one root, so callers can
catch ``Hf2TritonError`` and print its message; the CLI does exactly that::

    Hf2TritonError
    ├── OptionsError           an option or setting is invalid (also a ValueError)
    ├── CheckpointError        the checkpoint directory is missing files or unsupported
    ├── CalibrationDataError   the INT8 calibration text cannot be read or is too little
    ├── InputDataError         perf_analyzer input data is not in perf_analyzer's format
    ├── ExportError            torch → ONNX export failed
    │   ├── ParityError        the ONNX file disagrees with PyTorch beyond tolerance
    │   └── QuantizationError  no INT8 variant meets the accuracy guard, or quantization failed
    ├── RepositoryError        the output repository cannot be written (e.g. holds another model)
    ├── MissingDependencyError an optional part (GPU, TensorRT, Docker, tritonserver) is absent
    ├── CompatibilityError     TensorRT plans do not match the serving TensorRT, GPU or pinned release
    ├── ServerError            the local tritonserver failed to start or died
    └── ClientError            a request failed
        ├── InvalidInputError  the server rejected the input (HTTP 400 / gRPC INVALID_ARGUMENT)
        └── ServerUnavailableError  the server is unreachable or the model is not ready

Outside the tree on purpose: ``backends.tokenizer.TextInputError`` (a ``ValueError``). The
step code is copied into model repositories and runs inside Triton's python backend, where
it must not import hf2triton; the steps turn it into a per-request INVALID_ARG answer, which
clients see as :class:`InvalidInputError`.
"""

from __future__ import annotations


class Hf2TritonError(Exception):
    """Root of every error hf2triton raises on purpose."""


class OptionsError(Hf2TritonError, ValueError):
    """An option or setting is invalid; the message names it and the accepted values."""


class CheckpointError(Hf2TritonError):
    """The checkpoint directory is incomplete or holds an unsupported model."""


class CalibrationDataError(Hf2TritonError):
    """The calibration file cannot be read or holds too little text."""


class InputDataError(Hf2TritonError):
    """perf_analyzer input data does not have the shape perf_analyzer reads."""


class ExportError(Hf2TritonError):
    """Exporting the checkpoint to ONNX failed."""


class ParityError(ExportError):
    """The exported model's outputs differ from PyTorch's beyond tolerance."""


class QuantizationError(ExportError):
    """No quantized variant meets the accuracy threshold, or quantization failed."""


class RepositoryError(Hf2TritonError):
    """The Triton model repository cannot be written as asked."""


class MissingDependencyError(Hf2TritonError):
    """An optional component is not available; the message says how to get it."""


class CompatibilityError(Hf2TritonError):
    """TensorRT plans were built for another TensorRT version, GPU or release than they would run on."""


class ServerError(Hf2TritonError):
    """The local tritonserver could not be started or stopped working."""


class ClientError(Hf2TritonError):
    """An inference request failed."""


class InvalidInputError(ClientError):
    """The server rejected a request because of its input."""


class ServerUnavailableError(ClientError):
    """The server cannot be reached or the model is not ready."""
