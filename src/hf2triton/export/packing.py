"""Packed graph: several texts per row, each attending only to its own tokens.

A padded batch of mixed lengths runs every text at the longest one's width. The packed
graph takes texts back to back instead (``onnx_model.PACKED_INPUTS``: token ids, each
token's position within its text, and its text's number in the row) and builds the
block-diagonal attention mask inside the graph, so its linear layers — most of the
work — run on real tokens only. Same weights, same math: parity against the padded
graph is checked on the parity texts before it is served.

Only for outputs per token (embeddings, pooled after the graph per text; token
classification); a classifier's head reads one position per row and stays on the padded graph.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hf2triton.backends import onnx_model
from hf2triton.backends.tokenizer import TokenizerSettings, tokenize
from hf2triton.errors import ExportError
from hf2triton.export.checkpoint import Checkpoint
from hf2triton.export.onnx_export import DEFAULT_OPSET
from hf2triton.export.parity import PARITY_TEXTS

log = logging.getLogger(__name__)


class PackedWrapper(torch.nn.Module):
    """The model on packed rows: a 4-D additive mask lets each token see its own text only."""

    def __init__(self, model: torch.nn.Module, output_name: str, position_offset: int, token_types: bool):
        super().__init__()
        self.model, self.output_name = model, output_name
        self.position_offset, self.token_types = position_offset, token_types

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        same_text = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
        bias = torch.where(same_text[:, None], 0.0, torch.finfo(torch.float32).min)  # [rows, 1, width, width]
        inputs = {"input_ids": input_ids, "position_ids": position_ids + self.position_offset, "attention_mask": bias}
        if self.token_types:
            inputs["token_type_ids"] = torch.zeros_like(input_ids)
        return self.model(**inputs)[self.output_name]


def position_offset(model: torch.nn.Module) -> int:
    """Where a text's positions start: RoBERTa-style embeddings count from padding_idx + 1."""
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    padding_idx = getattr(embeddings, "padding_idx", None)
    return int(padding_idx) + 1 if padding_idx is not None else 0


def supports_packing(checkpoint: Checkpoint) -> bool:
    """Outputs per token of single texts (embedders, token classifiers)."""
    return checkpoint.task.model_output_has_sequence_axis and not checkpoint.task.text_pairs


def export_packed(model: torch.nn.Module, checkpoint: Checkpoint, path: Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export the packed graph of ``model`` to ``path`` (dynamic rows and width)."""
    wrapper = PackedWrapper(model, checkpoint.task.model_output, position_offset(model),
                            "token_type_ids" in checkpoint.input_names).eval()
    sample = onnx_model.packed_batch([[5, 6, 7], [5, 6, 7, 8], [5]], [[0, 1], [2]]).feeds  # two texts in a row
    names = list(onnx_model.PACKED_INPUTS)
    axes = {name: {0: "rows", 1: "width"} for name in (*names, checkpoint.task.model_output)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(wrapper, tuple(torch.from_numpy(sample[n]) for n in names), str(path),
                              input_names=names, output_names=[checkpoint.task.model_output], dynamic_axes=axes,
                              opset_version=opset, do_constant_folding=True, dynamo=False)
        except Exception as exc:  # torch raises many types; report them as one
            raise ExportError(f"torch.onnx.export of the packed graph failed for {checkpoint.path}: {exc}") from exc
    return path


@dataclass(frozen=True)
class PackedCheck:
    """The packed graph against the padded one on the same texts, per real token."""

    texts: int
    rows: int  # the texts ran packed in this many rows
    max_abs_diff: float
    atol: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol

    def summary(self) -> str:
        verdict = "matches" if self.passed else "does NOT match"
        return (f"packed graph {verdict} the padded one on {self.texts} texts in {self.rows} packed rows: "
                f"max |diff| {self.max_abs_diff:.2e} per token (atol {self.atol:g})")


def check_packed(packed: Path, padded: Path, checkpoint: Checkpoint, encoder, settings: TokenizerSettings,
                 atol: float = 1e-4, texts: tuple[str, ...] = PARITY_TEXTS, texts_per_row: int = 3) -> PackedCheck:
    """Run ``texts`` through both graphs (packed: about ``texts_per_row`` per row, longest
    first into the least-filled row; padded: each text alone) and compare every real token."""
    encodings = tokenize(encoder, list(texts), settings)
    token_ids = [encoding.ids for encoding in encodings]
    lengths = np.array([len(ids) for ids in token_ids], dtype=np.int64)
    output = checkpoint.task.model_output
    packed_session, padded_session = onnx_model.create_session(packed), onnx_model.create_session(padded)
    order = [int(i) for i in np.argsort(-lengths, kind="stable")]
    rows = onnx_model.balanced_rows(order, lengths, max(1, len(order) // texts_per_row))
    batch = onnx_model.packed_batch(token_ids, rows, settings.pad_id)
    (raw,) = packed_session.run([output], batch.feeds)
    worst = 0.0
    for index, (row, start) in batch.places.items():
        alone = np.array([token_ids[index]], dtype=np.int64)
        feeds = {"input_ids": alone, "attention_mask": np.ones_like(alone), "token_type_ids": np.zeros_like(alone)}
        (reference,) = padded_session.run([output], {n: feeds[n] for n in checkpoint.input_names})
        got = raw[row, start : start + len(token_ids[index])]
        worst = max(worst, float(np.abs(got - reference[0]).max(initial=0.0)))
    return PackedCheck(len(texts), len(rows), worst, atol)


def packed_graph(model: torch.nn.Module, checkpoint: Checkpoint, padded: Path, destination: Path, encoder,
                 settings: TokenizerSettings, atol: float = 1e-4, opset: int = DEFAULT_OPSET) -> Path | None:
    """The checked packed graph of ``model`` beside ``padded``, or None (with the reason logged)
    when the task has no per-token output or the graph does not match."""
    if not supports_packing(checkpoint):
        return None
    try:
        export_packed(model, checkpoint, destination, opset)
        check = check_packed(destination, padded, checkpoint, encoder, settings, atol)
    except Exception as exc:  # noqa: BLE001 - the padded graph serves instead
        log.warning("no packed graph (the padded one serves): %s", exc)
        return None
    if not check.passed:
        log.warning("%s: the padded graph serves", check.summary())
        return None
    log.info(check.summary())
    return destination
