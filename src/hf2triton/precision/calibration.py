"""Calibration and held-out texts, and the token batches ONNX Runtime calibrates on.

Users bring their own text (``--calibration-data FILE``: plain lines, JSONL or CSV with
a named column); a default set ships with the package, and a separate held-out set
is what the accuracy guard measures on, so no variant is judged on the text it was
calibrated with.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from hf2triton.backends.tokenizer import TokenizerSettings
from hf2triton.errors import CalibrationDataError

MIN_TEXTS = 8


def packaged_texts(name: str) -> list[str]:
    """``calibration`` or ``heldout``: the text sets shipped in hf2triton/data/."""
    text = resources.files("hf2triton.data").joinpath(f"{name}.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


def read_texts(path: Path, column: str = "text") -> list[str]:
    """Texts from a .txt (one per line), .jsonl (``column`` field) or .csv (``column``) file."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationDataError(f"cannot read calibration data {path}: {exc}") from None
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        texts = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise CalibrationDataError(f"{path}:{number}: not JSON ({exc})") from None
            if not isinstance(record, dict) or not isinstance(record.get(column), str):
                raise CalibrationDataError(f"{path}:{number}: no string field {column!r}")
            texts.append(record[column])
    elif suffix in (".csv", ".tsv"):
        reader = csv.DictReader(raw.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        if column not in (reader.fieldnames or []):
            raise CalibrationDataError(f"{path}: no column {column!r}; columns are {reader.fieldnames}")
        texts = [row[column] for row in reader if row[column]]
    else:
        texts = [line for line in raw.splitlines() if line.strip()]
    if len(texts) < MIN_TEXTS:
        raise CalibrationDataError(f"{path}: {len(texts)} texts; calibration needs at least {MIN_TEXTS}")
    return texts


@dataclass(frozen=True)
class TokenFeeds:
    """Model input feeds for ONNX Runtime's calibrators (a ``CalibrationDataReader``)."""

    feeds: tuple[dict[str, np.ndarray], ...]

    def reader(self):
        from onnxruntime.quantization import CalibrationDataReader

        class Reader(CalibrationDataReader):
            def __init__(self, feeds):
                self._feeds: Iterator = iter(feeds)

            def get_next(self):
                return next(self._feeds, None)

        return Reader(self.feeds)


def unpadded_feeds(tokenizer, texts: list[str], settings: TokenizerSettings) -> TokenFeeds:
    """One text per batch: no padding position ever enters the observed ranges."""
    feeds = []
    for encoding in tokenizer.encode_batch(texts):
        length = len(encoding.ids)
        arrays = {
            "input_ids": np.array([encoding.ids], dtype=np.int64),
            "attention_mask": np.ones((1, length), dtype=np.int64),
            "token_type_ids": np.array([encoding.type_ids], dtype=np.int64),
        }
        feeds.append({name: arrays[name] for name in settings.input_names})
    return TokenFeeds(tuple(feeds))


def packed_feeds(tokenizer, texts: list[str], settings: TokenizerSettings, length: int = 128) -> TokenFeeds:
    """Texts packed back to back into full rows of ``length`` tokens, no padding.

    Histogram calibrators (entropy, percentile) stack every batch into one array,
    so all batches must share a shape; packing gives that without padding.
    """
    length = min(length, settings.max_length)
    stream_ids, stream_types = [], []
    for encoding in tokenizer.encode_batch(texts):
        stream_ids.extend(encoding.ids)
        stream_types.extend(encoding.type_ids)
    rows = len(stream_ids) // length
    if rows == 0:
        raise CalibrationDataError(f"calibration text holds fewer than {length} tokens")
    feeds = []
    for row in range(rows):
        window = slice(row * length, (row + 1) * length)
        arrays = {
            "input_ids": np.array([stream_ids[window]], dtype=np.int64),
            "attention_mask": np.ones((1, length), dtype=np.int64),
            "token_type_ids": np.array([stream_types[window]], dtype=np.int64),
        }
        feeds.append({name: arrays[name] for name in settings.input_names})
    return TokenFeeds(tuple(feeds))
