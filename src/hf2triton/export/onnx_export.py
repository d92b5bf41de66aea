"""PyTorch → ONNX: a plain graph (standard ops only) with dynamic batch and sequence axes.

Traps this module avoids (measured, see DESIGN.md):
- transformers 5 changed the positional order of ``forward``: the wrapper passes keywords.
- ``torch.onnx.export`` restores the wrapper's training flag afterwards, and a fresh
  module is in training mode: the wrapper is put in eval mode, or the PyTorch
  reference silently runs with dropout.
- sdpa attention exports a graph ONNX Runtime's BERT optimizer cannot fuse: export
  with eager attention.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from hf2triton.export.checkpoint import Checkpoint
from hf2triton.errors import ExportError

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17


class ExportWrapper(torch.nn.Module):
    """Calls the Hugging Face model with keyword inputs and returns the task's one output."""

    def __init__(self, model: torch.nn.Module, input_names: tuple[str, ...], output_name: str):
        super().__init__()
        self.model = model
        self.input_names = input_names
        self.output_name = output_name

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        outputs = self.model(**dict(zip(self.input_names, inputs)))
        return outputs[self.output_name]


def load_torch_model(checkpoint: Checkpoint) -> torch.nn.Module:
    """The checkpoint in PyTorch, eval mode, eager attention (see module docstring)."""
    import transformers

    auto_class = getattr(transformers, checkpoint.task.auto_model)
    try:
        model = auto_class.from_pretrained(checkpoint.path, attn_implementation="eager")
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot load {checkpoint.path} with {checkpoint.task.auto_model}: {exc}") from exc
    return model.eval()


def wrap(model: torch.nn.Module, checkpoint: Checkpoint) -> ExportWrapper:
    return ExportWrapper(model, checkpoint.input_names, checkpoint.task.model_output).eval()


def sample_inputs(checkpoint: Checkpoint) -> tuple[torch.Tensor, ...]:
    """A padded batch of 2 × 8 tokens: tracing sees a real mask with a padded row."""
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    mask[1, 5:] = 0
    available = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return tuple(available[name] for name in checkpoint.input_names)


def export_onnx(model: torch.nn.Module, checkpoint: Checkpoint, path: Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export ``model`` to ``path`` as one ONNX file with dynamic batch and sequence axes."""
    wrapper = wrap(model, checkpoint)
    output = checkpoint.task.model_output
    axes = {name: {0: "batch", 1: "sequence"} for name in checkpoint.input_names}
    axes[output] = {0: "batch", 1: "sequence"} if checkpoint.task.model_output_has_sequence_axis else {0: "batch"}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        try:
            torch.onnx.export(
                wrapper,
                sample_inputs(checkpoint),
                str(path),
                input_names=list(checkpoint.input_names),
                output_names=[output],
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:  # torch raises many types; report them as one
            raise ExportError(f"torch.onnx.export failed for {checkpoint.path}: {exc}") from exc
    for warning in caught:
        log.debug("torch.onnx.export: %s", warning.message)
    if wrapper.training or model.training:
        raise ExportError("the model left eval mode during export; the parity reference would use dropout")
    check_onnx(path, checkpoint)
    return path


def check_onnx(path: Path, checkpoint: Checkpoint) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"{path} is not a valid ONNX model: {exc}") from exc
    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = tuple(i.name for i in graph.input)
    if inputs != checkpoint.input_names:
        raise ExportError(f"{path} takes inputs {inputs}, expected {checkpoint.input_names}")
