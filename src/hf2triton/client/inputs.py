"""Texts to the ensemble's ``TEXT`` tensor: validation against the published limits, and
splitting into requests of at most the server's ``max_batch_size``.

Every problem with the texts is collected and raised once, before any request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import numpy as np

from hf2triton import contract
from hf2triton.errors import InvalidInputError, OptionsError

_MAX_PROBLEMS_SHOWN = 10

_T = TypeVar("_T")


def as_list(texts: Sequence[str] | str) -> list[Any]:
    """``texts`` as a list; a single ``str`` is one text."""
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
        raise InvalidInputError(f"texts must be a str or a sequence of str, got {type(texts).__name__}")
    return list(texts)


def _too_long(index: int, size: int, limit: int) -> str:
    return f"texts[{index}] is {size} UTF-8 bytes, over the limit of {limit} bytes ({contract.PARAM_MAX_TEXT_BYTES})"


def _raise_problems(problems: list[str]) -> None:
    if problems:
        head = "invalid input: " if len(problems) == 1 else f"invalid input ({len(problems)} problems): "
        shown = problems[:_MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        raise InvalidInputError(head + "; ".join(shown) + (f"; and {more} more" if more else ""))


def encode_texts(texts: Sequence[str] | str, max_text_bytes: int = 0, name: str = "texts") -> np.ndarray:
    """Encode texts as UTF-8 into the ``TEXT`` tensor: an ``np.object_`` array ``[n, 1]`` of bytes.

    A single ``str`` is one text; ``""`` is a valid text. With ``max_text_bytes > 0``
    longer texts are rejected. Every problem is collected and raised once as
    :class:`InvalidInputError` naming each index (its type, or its size and the limit).
    """
    items = as_list(texts)
    problems: list[str] = []
    array = np.empty((len(items), 1), dtype=np.object_)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            problems.append(f"{name}[{i}] is {type(text).__name__}, expected str")
            continue
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError as exc:
            problems.append(f"{name}[{i}] cannot be encoded as UTF-8 ({exc.reason} at position {exc.start})")
            continue
        if 0 < max_text_bytes < len(data):
            problems.append(_too_long(i, len(data), max_text_bytes))
        array[i, 0] = data
    _raise_problems(problems)
    return array


def encode_pairs(text_pair: Sequence[str] | str, rows: int) -> np.ndarray:
    """The ``TEXT_PAIR`` tensor: one second text per text (``text_pair[i]`` goes with ``texts[i]``)."""
    items = as_list(text_pair)
    if len(items) != rows:
        raise InvalidInputError(
            f"invalid input: {len(items)} text_pair items for {rows} texts; send one text_pair per text"
        )
    return encode_texts(items, name="text_pair")


def check_sizes(batch: np.ndarray, max_text_bytes: int) -> None:
    """Reject encoded texts over ``max_text_bytes`` (0 = no limit), naming each index."""
    if max_text_bytes > 0:
        _raise_problems(
            [_too_long(i, len(data), max_text_bytes) for i, data in enumerate(batch[:, 0]) if len(data) > max_text_bytes]
        )


def chunk(items: Sequence[_T], size: int) -> list[Sequence[_T]]:
    """Split ``items`` (a list, tuple or array) into consecutive slices of at most ``size``, in order."""
    if size < 1:
        raise OptionsError(f"chunk size must be >= 1, got {size}")
    return [items[start : start + size] for start in range(0, len(items), size)]
