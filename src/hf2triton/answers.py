"""Task answers computed from a model's raw outputs, the way the served postprocess step does,
for comparing two runs of a model (the parity check at export, the accuracy guard).

What is compared comes from the task row (:mod:`hf2triton.tasks`): pooled unit
embeddings when ``task.pooled``, every real token's scores when
``task.comparison.per_token``, else one row of scores per text.
"""

from __future__ import annotations

import numpy as np

from hf2triton.backends import postprocess
from hf2triton.tasks import Task


def comparable(task: Task, raw: np.ndarray, attention_mask: np.ndarray, pooling_mode: str) -> np.ndarray:
    """What ``task.comparison`` looks at: unit embeddings ``[n, H]``, or raw scores per text or per real token."""
    if task.pooled:
        return postprocess.embed(raw, attention_mask, pooling_mode, True)
    if task.comparison.per_token:  # padded positions carry no meaning
        return raw[attention_mask.astype(bool)]
    return raw


def answers(task: Task, raw: np.ndarray, attention_mask: np.ndarray, pooling_mode: str, multi_label: bool) -> np.ndarray:
    """What a user gets: unit embeddings, or probabilities (softmax; sigmoid for multi-label) as float32."""
    values = comparable(task, raw, attention_mask, pooling_mode)
    if task.pooled:
        return values
    if task.single_label:  # a softmax over one logit is always 1: compare the relevance score itself
        return postprocess.sigmoid(values).astype(np.float32)
    return (postprocess.sigmoid(values) if multi_label else postprocess.softmax(values)).astype(np.float32)
