"""perf_analyzer ``--input-data`` JSON from real text, and a validator for that format.

perf_analyzer reads ``{"data": [STEP, ...]}`` where each STEP maps an input name to
its content for one request: a list of values (``{"TEXT": ["a sentence"]}`` for a
BYTES input of dims [1]), or ``{"content": [...], "shape": [...]}`` for inputs with
a variable dimension (the model step's token ids). Standard library only (plus
``tokenizers`` for token-id data), so it also runs in the Triton SDK container.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hf2triton.errors import InputDataError

TEXT_INPUT = "TEXT"  # equal to hf2triton.contract.INPUT_TEXT


def text_input_data(texts: Sequence[str], input_name: str = TEXT_INPUT) -> dict[str, Any]:
    """One perf_analyzer step per text: ``{"data": [{"TEXT": [text]}, ...]}``."""
    return {"data": [{input_name: [text]} for text in texts]}


def token_input_data(token_rows: Sequence[dict[str, list[int]]]) -> dict[str, Any]:
    """One step per request of token ids (``{"input_ids": {"content": [...], "shape": [n]}}``)."""
    return {
        "data": [
            {name: {"content": list(ids), "shape": [len(ids)]} for name, ids in row.items()} for row in token_rows
        ]
    }


def tokenize_for_model_step(tokenizer_json: Path, texts: Sequence[str], input_names: Sequence[str],
                            max_length: int) -> list[dict[str, list[int]]]:
    """Token rows as the tokenizer step makes them (unpadded, truncated), for the model step alone."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    rows = []
    for encoding in tokenizer.encode_batch(list(texts)):
        available = {
            "input_ids": encoding.ids,
            "attention_mask": [1] * len(encoding.ids),
            "token_type_ids": encoding.type_ids,
        }
        rows.append({name: available[name] for name in input_names})
    return rows


def _step_problems(index: int, step: Any) -> list[str]:
    if not isinstance(step, dict) or not step:
        return [f"data[{index}] must be a non-empty object mapping input names to content"]
    problems = []
    for name, value in step.items():
        where = f"data[{index}][{name!r}]"
        if isinstance(value, list):
            if not value:
                problems.append(f"{where} is an empty list")
        elif isinstance(value, dict):
            content, shape = value.get("content"), value.get("shape")
            if not isinstance(content, list) or not isinstance(shape, list):
                problems.append(f"{where} needs a 'content' list and a 'shape' list")
            elif not all(isinstance(d, int) and d > 0 for d in shape):
                problems.append(f"{where}: shape {shape} must hold positive integers")
            elif math.prod(shape) != len(content):
                problems.append(f"{where}: shape {shape} holds {math.prod(shape)} values, content has {len(content)}")
        else:
            problems.append(f"{where} must be a list or an object with content and shape")
    return problems


def validate_input_data(document: Any, required_inputs: Sequence[str] = ()) -> None:
    """Raise :class:`InputDataError` listing every way ``document`` differs from perf_analyzer's format."""
    if not isinstance(document, dict) or not isinstance(document.get("data"), list) or not document["data"]:
        raise InputDataError('input data must be an object {"data": [ {...}, ... ]} with at least one step')
    problems: list[str] = []
    for index, step in enumerate(document["data"]):
        problems.extend(_step_problems(index, step))
        if isinstance(step, dict):
            problems.extend(f"data[{index}] lacks input {name!r}" for name in required_inputs if name not in step)
    if problems:
        shown = "; ".join(problems[:10]) + (f"; and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise InputDataError(f"invalid perf_analyzer input data ({len(problems)} problems): {shown}")


def write_input_data(document: dict[str, Any], destination: Path) -> Path:
    validate_input_data(document)
    destination.parent.mkdir(parents=True, exist_ok=True)
    destination.write_text(json.dumps(document, ensure_ascii=False) + "\n", encoding="utf-8")
    return destination
