"""Token counts for ``usage``: counted by the very tokenizer the ensemble serves.

Two sources, chosen per model when it is discovered:

* :class:`LocalTokenCounter` (preferred): the gateway runs beside the model repository
  (``hf2triton serve --gateway-port``, or ``--model-repository``) and loads the
  ensemble's own ``tokenizer.json`` with the served truncation, as the tokenizer step
  does. Counting costs microseconds and no round trip.
* :class:`TritonTokenCounter`: the gateway runs elsewhere; it asks the ensemble's
  tokenizer step (``NAME_tokenizer``, a model Triton serves anyway) for the attention
  mask, concurrently with the ensemble request.

A model with neither (the fused layout, far from its repository) reports 0 tokens,
and the gateway logs that once.
"""

from __future__ import annotations

import asyncio

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from hf2triton import contract
from hf2triton.client import ModelInfo

logger = logging.getLogger(__name__)

_SERIAL_MAX = 8
ATTENTION_MASK = "attention_mask"  # the tokenizer step's output whose row sums are token counts


class TokenCounter(Protocol):
    remote: bool  # counting sends a request (run it concurrently with the inference), or is local and fast
    in_response: bool  # the model answers the counts itself (OUTPUT_TOKENS): ask for them, do not count

    async def count(self, texts: list[str]) -> list[int]: ...


@dataclass(frozen=True)
class ResponseTokenCounter:
    """The model answers ``TOKENS`` with every request (the fused layout): counts cost nothing
    and work away from the repository. ``count`` is never called: the service reads the output."""

    remote: bool = False
    in_response: bool = True

    async def count(self, texts: list[str]) -> list[int]:
        raise NotImplementedError("read contract.OUTPUT_TOKENS from the model's answer")


@dataclass(frozen=True)
class LocalTokenCounter:
    """Counts with the served ``tokenizer.json`` (truncated to the served max length, special tokens in)."""

    tokenizer: object  # tokenizers.Tokenizer
    source: Path
    remote: bool = False
    in_response: bool = False

    async def count(self, texts: list[str]) -> list[int]:
        if len(texts) <= _SERIAL_MAX:  # encode_batch hands work to a thread pool: slower for a few texts
            return [len(self.tokenizer.encode(text, add_special_tokens=True).ids) for text in texts]
        return [len(encoding.ids) for encoding in self.tokenizer.encode_batch(texts, add_special_tokens=True)]


@dataclass(frozen=True)
class TritonTokenCounter:
    """Counts by running the ensemble's tokenizer step on Triton."""

    connection: object  # hf2triton.gateway.triton.TritonConnection
    step: ModelInfo
    text_input: str = contract.INPUT_TEXT
    remote: bool = True
    in_response: bool = False

    async def count(self, texts: list[str]) -> list[int]:
        # One call per max_batch_size chunk: each chunk's mask is padded to its own width, so masks of
        # several chunks cannot be stacked into one array.
        size = max(1, self.step.max_batch_size)
        chunks = [texts[start:start + size] for start in range(0, len(texts), size)]
        masks = await asyncio.gather(*(self.connection.infer_columns(self.step, {self.text_input: chunk},
                                                                     (ATTENTION_MASK,)) for chunk in chunks))
        return [int(row) for chunk, arrays in zip(chunks, masks)
                for row in np.asarray(arrays[ATTENTION_MASK]).reshape(len(chunk), -1).sum(axis=1)]


@dataclass(frozen=True)
class NoTokenCounter:
    remote: bool = False
    in_response: bool = False

    async def count(self, texts: list[str]) -> list[int]:
        return [0] * len(texts)


def _latest_version(folder: Path) -> Path | None:
    versions = [int(p.name) for p in folder.iterdir() if p.is_dir() and re.fullmatch(r"\d+", p.name)] \
        if folder.is_dir() else []
    return folder / str(max(versions)) if versions else None


def find_tokenizer_json(repository: Path, name: str) -> Path | None:
    """``NAME_tokenizer/<latest>/tokenizer.json`` (ensemble layout) or ``NAME/<latest>/tokenizer.json`` (fused)."""
    tokenizer_step, _, _ = contract.step_names(name)
    for folder in (repository / tokenizer_step, repository / name):
        version = _latest_version(folder)
        if version is not None and (version / "tokenizer.json").is_file():
            return version / "tokenizer.json"
    return None


def local_counter(repository: Path, info: ModelInfo) -> LocalTokenCounter | None:
    """The served tokenizer of ``info`` loaded from ``repository``, or None when it is not there."""
    path = find_tokenizer_json(repository, info.name)
    if path is None:
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()  # a checkpoint's tokenizer.json may pad to a fixed length: that is no token
    if info.max_sequence_length > 0:
        tokenizer.enable_truncation(max_length=info.max_sequence_length)
    return LocalTokenCounter(tokenizer, path)
