"""The task table: every row carries what the stages need, and its comparison means what it says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hf2triton import contract
from hf2triton.client.results import RESULT_TYPES
from hf2triton.tasks import (
    EMBEDDINGS,
    METRIC_COSINE,
    METRIC_LABELS,
    METRIC_SCORES,
    RERANK,
    SEQUENCE_CLASSIFICATION,
    TASKS,
    TOKEN_CLASSIFICATION,
    cosines,
    labels_agree,
)

SRC = Path(__file__).resolve().parents[1] / "src"


def test_every_row_is_complete():
    for name, task in TASKS.items():
        assert task.name == name
        assert task.answer in RESULT_TYPES, name  # the client can decode it
        assert task.comparison.served in RESULT_TYPES, name  # verify can compare it
        assert task.comparison.metric in (METRIC_COSINE, METRIC_LABELS, METRIC_SCORES), name
        assert 0 < task.comparison.parity_threshold <= 1, name
        assert task.served_outputs[-1] == contract.OUTPUT_TRUNCATED, name
        assert task.pooled != task.labelled, name  # an answer is a pooled vector or labels


def test_parity_metric_names_stay_what_reports_were_written_with():
    assert [t.comparison.parity_metric for t in (EMBEDDINGS, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION)] == [
        "min_cosine", "label_agreement", "token_label_agreement"]
    assert EMBEDDINGS.comparison.accuracy_metric == "mean_cosine"
    assert SEQUENCE_CLASSIFICATION.comparison.accuracy_metric == "label_agreement"


def test_cosine_scores_per_row_and_parity_takes_the_worst():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    scores = EMBEDDINGS.comparison.scores(a, b)
    np.testing.assert_allclose(scores, [1.0, -1.0, np.sqrt(0.5)])
    np.testing.assert_allclose(cosines(a, b), scores)
    assert EMBEDDINGS.comparison.parity_value(scores) == pytest.approx(-1.0)


def test_label_agreement_with_and_without_tie_tolerance():
    reference = np.array([[0.50, 0.49, 0.01], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1]])
    candidate = np.array([[0.49, 0.50, 0.01], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7]])
    strict = SEQUENCE_CLASSIFICATION.comparison.scores(reference, candidate)
    np.testing.assert_array_equal(strict, [0.0, 1.0, 0.0])
    tolerant = SEQUENCE_CLASSIFICATION.comparison.scores(reference, candidate, atol=0.02)
    np.testing.assert_array_equal(tolerant, [1.0, 1.0, 0.0])  # row 0: the reference cannot tell them apart
    np.testing.assert_array_equal(labels_agree(reference, candidate, 0.02), [True, True, False])
    assert SEQUENCE_CLASSIFICATION.comparison.parity_value(tolerant) == pytest.approx(2 / 3)


def test_rerank_scores_agree_only_within_tolerance():
    reference = np.array([[0.5], [0.1], [0.9]])
    candidate = np.array([[0.50005], [0.2], [0.9]])
    np.testing.assert_array_equal(RERANK.comparison.scores(reference, candidate), [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(RERANK.comparison.scores(reference, candidate, atol=0.2), [1.0, 1.0, 1.0])
    assert RERANK.comparison.parity_metric == RERANK.comparison.accuracy_metric == "score_agreement"
    assert RERANK.text_pairs and SEQUENCE_CLASSIFICATION.text_pairs and not EMBEDDINGS.text_pairs


def test_multi_label_agreement_compares_every_label_decision():
    reference = np.array([[0.9, 0.6, 0.1], [0.9, 0.6, 0.1]])
    candidate = np.array([[0.8, 0.55, 0.2], [0.8, 0.45, 0.2]])  # row 1 drops a label
    scores = SEQUENCE_CLASSIFICATION.comparison.scores(reference, candidate, multi_label=True)
    np.testing.assert_array_equal(scores, [1.0, 0.0])


def test_the_table_imports_without_torch_or_tritonclient():
    code = "import sys, hf2triton.tasks; print(sorted(m for m in ('torch', 'tritonclient') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC)}, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]"
