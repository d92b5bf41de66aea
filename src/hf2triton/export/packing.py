"""Packed graph: several texts per row, each attending only to its own tokens.

A padded batch of mixed lengths runs every text at the longest one's width. The packed
graph takes texts back to back instead (``batching.PACKED_INPUTS``: token ids, each
token's position within its text, and its text's number in the row) and builds the
block-diagonal attention mask inside the graph, so its linear layers — most of the
work — run on real tokens only. Same weights, same math: parity against the padded
graph is checked on the parity texts (pairs for pair models) before it is served.

Outputs per token (embeddings, pooled after the graph per text; token classification)
come back per row. A classifier's or reranker's head reads one token per text, so its
graph also takes each text's first token (``batching.TEXT_STARTS``), hands the head
those tokens only, and answers one row per text; a pair model's also takes token types.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from hf2triton.backends import batching, onnx_model
from hf2triton.backends.tokenizer import TokenizerSettings, tokenize, tokenize_pairs
from hf2triton.errors import ExportError
from hf2triton.export.checkpoint import Checkpoint
from hf2triton.export.onnx_export import DEFAULT_OPSET
from hf2triton.export.parity import PARITY_TEXTS, text_pairs

log = logging.getLogger(__name__)


class FirstTokens(torch.nn.Module):
    """Stands in for a classifier's base model: runs it on packed rows and answers with each
    text's first token only ([texts, 1, hidden], pooled by the base model's pooler if it has
    one), which is what every sequence-classification head reads."""

    def __init__(self, base: torch.nn.Module):
        super().__init__()
        self.base = base
        self.starts: torch.Tensor | None = None  # set per call: flat indices into rows × width

    def forward(self, *args, **kwargs) -> BaseModelOutputWithPooling:
        hidden = self.base(*args, **kwargs)[0]  # [rows, width, hidden]
        first = hidden.reshape(-1, hidden.shape[-1])[self.starts].unsqueeze(1)
        pooler = getattr(self.base, "pooler", None)
        return BaseModelOutputWithPooling(last_hidden_state=first,
                                          pooler_output=pooler(first) if pooler is not None else None)


class PackedWrapper(torch.nn.Module):
    """The model on packed rows: a 4-D additive mask lets each token see its own text only.

    ``names``: the graph's inputs in order (``PACKED_INPUTS``, then ``TOKEN_TYPES`` for pair
    models, then ``TEXT_STARTS`` when ``first_tokens`` stands in for the base model).
    """

    def __init__(self, model: torch.nn.Module, output_name: str, position_offset: int, token_types: bool,
                 names: tuple[str, ...], first_tokens: FirstTokens | None = None):
        super().__init__()
        self.model, self.output_name, self.names = model, output_name, names
        self.position_offset, self.token_types, self.first_tokens = position_offset, token_types, first_tokens

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        feeds = dict(zip(self.names, tensors))
        segment_ids = feeds["segment_ids"]
        same_text = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
        bias = torch.where(same_text[:, None], 0.0, torch.finfo(torch.float32).min)  # [rows, 1, width, width]
        input_ids = feeds["input_ids"]
        inputs = {"input_ids": input_ids, "position_ids": feeds["position_ids"] + self.position_offset,
                  "attention_mask": bias}
        if self.token_types:
            inputs["token_type_ids"] = feeds.get(batching.TOKEN_TYPES, torch.zeros_like(input_ids))
        if self.first_tokens is not None:
            self.first_tokens.starts = feeds[batching.TEXT_STARTS]
        return self.model(**inputs)[self.output_name]


def position_offset(model: torch.nn.Module) -> int:
    """Where a text's positions start: RoBERTa-style embeddings count from padding_idx + 1."""
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    padding_idx = getattr(embeddings, "padding_idx", None)
    return int(padding_idx) + 1 if padding_idx is not None else 0


def packed_input_names(checkpoint: Checkpoint) -> tuple[str, ...]:
    """The packed graph's inputs for ``checkpoint``'s task."""
    names = batching.PACKED_INPUTS
    if checkpoint.task.text_pairs and batching.TOKEN_TYPES in checkpoint.input_names:
        names += (batching.TOKEN_TYPES,)
    if not checkpoint.task.model_output_has_sequence_axis:
        names += (batching.TEXT_STARTS,)
    return names


def export_packed(model: torch.nn.Module, checkpoint: Checkpoint, path: Path, opset: int = DEFAULT_OPSET) -> Path:
    """Export the packed graph of ``model`` to ``path`` (dynamic rows and width; texts for a
    classifier's output)."""
    names = packed_input_names(checkpoint)
    output = checkpoint.task.model_output
    prefix = getattr(model, "base_model_prefix", "")
    first_tokens = FirstTokens(getattr(model, prefix)) if batching.TEXT_STARTS in names else None
    wrapper = PackedWrapper(model, output, position_offset(model), "token_type_ids" in checkpoint.input_names,
                            names, first_tokens).eval()
    sample = batching.packed_batch([[5, 6, 7], [5, 6, 7, 8], [5]], [[0, 1], [2]],  # two texts in a row
                                     type_ids=[[0, 0, 1], [0, 0, 1, 1], [0]]).feeds
    axes = {name: {0: "texts"} if name == batching.TEXT_STARTS else {0: "rows", 1: "width"} for name in names}
    axes[output] = {0: "rows", 1: "width"} if first_tokens is None else {0: "texts"}
    path.parent.mkdir(parents=True, exist_ok=True)
    if first_tokens is not None:  # the head reads the first tokens the stand-in hands it
        setattr(model, prefix, first_tokens)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, tuple(torch.from_numpy(sample[n]) for n in names), str(path),
                              input_names=list(names), output_names=[output], dynamic_axes=axes,
                              opset_version=opset, do_constant_folding=True, dynamo=False)
    except Exception as exc:  # torch raises many types; report them as one
        raise ExportError(f"torch.onnx.export of the packed graph failed for {checkpoint.path}: {exc}") from exc
    finally:
        if first_tokens is not None:
            setattr(model, prefix, first_tokens.base)
    return path


@dataclass(frozen=True)
class PackedCheck:
    """The packed graph against the padded one on the same texts, per real token (per text
    for a classifier's output)."""

    texts: int
    rows: int  # the texts ran packed in this many rows
    max_abs_diff: float
    atol: float
    compared: str = "token"  # what each difference is taken over: "token" or "text"

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol

    def summary(self) -> str:
        verdict = "matches" if self.passed else "does NOT match"
        return (f"packed graph {verdict} the padded one on {self.texts} texts in {self.rows} packed rows: "
                f"max |diff| {self.max_abs_diff:.2e} per {self.compared} (atol {self.atol:g})")


def check_packed(packed: Path, padded: Path, checkpoint: Checkpoint, encoder, settings: TokenizerSettings,
                 atol: float = 1e-4, texts: tuple[str, ...] = PARITY_TEXTS, texts_per_row: int = 3) -> PackedCheck:
    """Run ``texts`` (pairs of them for a pair model) through both graphs (packed: about
    ``texts_per_row`` per row, longest first into the least-filled row; padded: each text
    alone) and compare every real token, or each text's output for a classifier."""
    if checkpoint.task.text_pairs:
        pairs = text_pairs(texts)
        encodings = tokenize_pairs(encoder, [a for a, _ in pairs], [b for _, b in pairs], settings)
    else:
        encodings = tokenize(encoder, list(texts), settings)
    token_ids = [encoding.ids for encoding in encodings]
    type_ids = [encoding.type_ids for encoding in encodings]
    lengths = np.array([len(ids) for ids in token_ids], dtype=np.int64)
    output = checkpoint.task.model_output
    packed_session, padded_session = onnx_model.create_session(packed), onnx_model.create_session(padded)
    names = onnx_model.input_names(packed_session)
    per_text = batching.TEXT_STARTS in names  # a classifier's graph: one output row per text
    order = [int(i) for i in np.argsort(-lengths, kind="stable")]
    rows = batching.balanced_rows(order, lengths, max(1, len(order) // texts_per_row))
    batch = batching.packed_batch(token_ids, rows, settings.pad_id, type_ids)
    (raw,) = packed_session.run([output], batch.feeds_for(names))
    worst = 0.0
    for j, index in enumerate(batch.texts):
        alone = np.array([token_ids[index]], dtype=np.int64)
        feeds = {"input_ids": alone, "attention_mask": np.ones_like(alone),
                 "token_type_ids": np.array([type_ids[index]], dtype=np.int64)}
        (reference,) = padded_session.run([output], {n: feeds[n] for n in checkpoint.input_names})
        if per_text:
            got = raw[j]
        else:
            row, start = batch.places[index]
            got = raw[row, start : start + len(token_ids[index])]
        worst = max(worst, float(np.abs(got - reference[0]).max(initial=0.0)))
    return PackedCheck(len(encodings), len(rows), worst, atol, "text" if per_text else "token")


def packed_graph(model: torch.nn.Module, checkpoint: Checkpoint, padded: Path, destination: Path, encoder,
                 settings: TokenizerSettings, atol: float = 1e-4, opset: int = DEFAULT_OPSET) -> Path | None:
    """The checked packed graph of ``model`` beside ``padded``, or None (with the reason logged)
    when the graph cannot be exported or does not match."""
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
