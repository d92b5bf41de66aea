"""``export_checkpoint``: checkpoint → ONNX → parity check → Triton repository.

This is the API; ``hf2triton export`` and ``build/export.py`` are thin shells over it.
"""

from __future__ import annotations

import logging
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from hf2triton.contract import DEFAULT_MODEL_NAME
from hf2triton.checkpoint import Checkpoint, default_checkpoint, inspect_checkpoint
from hf2triton.errors import CheckpointError
from hf2triton.onnx_export import DEFAULT_OPSET, export_onnx, load_torch_model
from hf2triton.parity import ParityReport, check_parity, require_parity
from hf2triton.repository import RepositoryLayout, ServingOptions, write_repository
from hf2triton.tokenization import served_tokenizer, tokenizer_settings, write_tokenizer_json

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
DEFAULT_MAX_TEXT_BYTES = 64 * 1024


@dataclass(frozen=True)
class ExportOptions:
    checkpoint: Path | None = None  # None: the embedded default model
    output_dir: Path = Path("model_repository")
    name: str | None = None  # default: from the checkpoint folder's name
    task: str | None = None  # default: detected from config.json
    max_length: int | None = None  # default: the model's own limit
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    opset: int = DEFAULT_OPSET
    atol: float = 1e-4
    overwrite: bool = False
    version: int | None = None  # None: a new model gets 1, another checkpoint the next version
    allow_parity_failure: bool = False
    serving: ServingOptions = field(default_factory=ServingOptions)

    def __post_init__(self):
        if self.name is not None and not NAME_PATTERN.match(self.name):
            raise CheckpointError(
                f"model name {self.name!r} is invalid: use letters, digits, '_' and '-' (at most 64)"
            )
        if self.version is not None and self.version < 1:
            raise CheckpointError(f"--version must be 1 or more, got {self.version}")
        if self.max_text_bytes < 1:
            raise CheckpointError(f"--max-text-bytes must be positive, got {self.max_text_bytes}")


@dataclass(frozen=True)
class ExportResult:
    layout: RepositoryLayout
    checkpoint: Checkpoint
    parity: ParityReport
    seconds: dict[str, float]


def model_name(options: ExportOptions, checkpoint_path: Path, is_default: bool) -> str:
    if options.name:
        return options.name
    if is_default:
        return DEFAULT_MODEL_NAME
    return re.sub(r"[^a-z0-9_]+", "_", checkpoint_path.name.lower()).strip("_")[:64] or "model"


def versions() -> dict[str, str]:
    found = {}
    for package in ("hf2triton", "torch", "transformers", "tokenizers", "onnx", "onnxruntime", "nvidia-pytriton"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def build_manifest(name: str, checkpoint: Checkpoint, options: ExportOptions, settings) -> dict:
    """What was built, from what, with which versions and command: enough to reproduce it."""
    return {
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "checkpoint": {
            "path": str(checkpoint.path),
            "fingerprint": checkpoint.fingerprint,
            "model_type": checkpoint.model_type,
            "architectures": list(checkpoint.architectures),
        },
        "task": checkpoint.task.name,
        "inputs": list(checkpoint.input_names),
        "max_sequence_length": settings.max_length,
        "buckets": list(settings.buckets),
        "labels": list(checkpoint.labels),
        "multi_label": checkpoint.multi_label,
        "pooling": asdict(checkpoint.pooling),
        "opset": options.opset,
        "serving": {**asdict(options.serving), "version_policy": str(options.serving.version_policy)},
        "versions": versions(),
    }


def export_checkpoint(options: ExportOptions) -> ExportResult:
    """Export, check and write; raises an ``Hf2TritonError`` subclass with a clear message."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    is_default = options.checkpoint is None
    path = default_checkpoint() if is_default else Path(options.checkpoint)
    checkpoint = inspect_checkpoint(path, task=options.task, max_length=options.max_length)
    name = model_name(options, checkpoint.path, is_default)
    log.info("exporting %s (%s, %s) as %s", checkpoint.path, checkpoint.model_type, checkpoint.task.name, name)
    with tempfile.TemporaryDirectory(prefix="hf2triton-export-") as tmp:
        work = Path(tmp)
        tokenizer_json = write_tokenizer_json(checkpoint, work / "tokenizer.json")
        settings = tokenizer_settings(tokenizer_json, checkpoint, options.max_text_bytes)
        model = load_torch_model(checkpoint)
        seconds["load"] = time.perf_counter() - start
        mark = time.perf_counter()
        onnx_file = export_onnx(model, checkpoint, work / "model.onnx", opset=options.opset)
        seconds["export"] = time.perf_counter() - mark
        mark = time.perf_counter()
        report = check_parity(
            model, onnx_file, checkpoint, served_tokenizer(tokenizer_json, settings), settings, atol=options.atol
        )
        seconds["parity"] = time.perf_counter() - mark
        require_parity(report, options.allow_parity_failure)
        mark = time.perf_counter()
        layout = write_repository(
            options.output_dir,
            name,
            checkpoint,
            onnx_file,
            tokenizer_json,
            settings,
            options.serving,
            build_manifest(name, checkpoint, options, settings),
            {"parity": asdict(report)},
            overwrite=options.overwrite,
            version=options.version,
        )
        seconds["write"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - start
    return ExportResult(layout, checkpoint, report, seconds)
