"""The task table: what each supported task exports, serves and returns.

Adding a task is adding a row (Optimum's ``_TASK_TO_COMMON_OUTPUTS`` idea): the
exporter, the repository writer, the client, the parity check, the accuracy guard
and ``verify`` read everything task-specific from here. A row says *what* (which
tensors, which answer, which comparison); the stage modules say *how*, keyed by
those fields, never by the task's name.

Importable without torch or tritonclient (numpy only): the client and the CLI's
option parsing use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hf2triton import contract

# What a served answer is, per text: the client decodes it into the matching result type.
ANSWER_EMBEDDING = "embedding"  # one pooled vector (hf2triton.client.Embedding)
ANSWER_CLASSIFICATION = "classification"  # top label + every label's probability (Classification)
ANSWER_ENTITIES = "entities"  # a JSON list of entities (Entities)
ANSWER_SCORE = "score"  # one relevance score per (query, document) pair (client.Score)

# How two answers to the same texts are compared (parity, accuracy guard, verify).
METRIC_COSINE = "cosine"  # pooled embeddings: cosine per text
METRIC_LABELS = "label_agreement"  # classifiers: top labels agree (per text, or per real token)
METRIC_SCORES = "score_agreement"  # rerankers: every score within atol of the reference's


@dataclass(frozen=True)
class OutputTensor:
    """One ensemble output: its name, Triton data type and per-row dims (-1 = variable)."""

    name: str
    data_type: str  # a ``model_config_pb2.DataType`` name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Comparison:
    """How answers of one task are compared wherever two runs must agree.

    ``metric`` decides the figure: :data:`METRIC_COSINE` (cosine of pooled, unit
    embeddings) or :data:`METRIC_LABELS` (top-label agreement; multi-label models:
    every label's 0.5 decision); ``per_token`` compares every real token's label rather
    than one per text. ``parity_threshold`` is what the ONNX export must reach against
    PyTorch (min cosine, or the fraction of agreeing labels). ``served`` is what
    ``verify`` compares on served answers: the answer kind (:data:`ANSWER_ENTITIES`
    compares entities, not token labels).
    """

    metric: str
    per_token: bool
    parity_threshold: float
    served: str

    @property
    def parity_metric(self) -> str:
        """The name the parity report gives its figure (kept stable: it is written to JSON)."""
        if self.metric == METRIC_COSINE:
            return "min_cosine"
        if self.metric == METRIC_SCORES:
            return METRIC_SCORES
        return "token_label_agreement" if self.per_token else "label_agreement"

    @property
    def accuracy_metric(self) -> str:
        """The accuracy guard's figure: mean cosine, or the fraction of agreeing labels."""
        return {METRIC_COSINE: "mean_cosine", METRIC_SCORES: METRIC_SCORES}.get(self.metric, "label_agreement")

    def parity_value(self, scores: np.ndarray) -> float:
        """The parity figure over all rows: the worst cosine, or the fraction of agreeing labels."""
        return float(np.min(scores)) if self.metric == METRIC_COSINE else float(np.mean(scores))

    def scores(
        self, reference: np.ndarray, candidate: np.ndarray, *, atol: float | None = None, multi_label: bool = False
    ) -> np.ndarray:
        """One figure per row (text or token), 1.0 = same answer.

        Cosine per row, or 1.0/0.0 label agreement: multi-label rows agree when every
        label's 0.5 decision agrees; single-label rows when the top labels agree, or,
        with ``atol``, when the reference cannot tell the two labels apart (a tie).
        """
        if self.metric == METRIC_COSINE:
            return cosines(reference, candidate)
        if self.metric == METRIC_SCORES:  # a score is its own answer: it must agree within atol
            limit = 1e-4 if atol is None else atol
            return (np.abs(reference - candidate) <= limit).all(axis=1).astype(np.float64)
        if multi_label:
            return ((reference >= 0.5) == (candidate >= 0.5)).all(axis=1).astype(np.float64)
        return labels_agree(reference, candidate, atol).astype(np.float64)


def cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two ``[n, H]`` arrays (unit rows give their dot product)."""
    reference, candidate = np.atleast_2d(reference), np.atleast_2d(candidate)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    return (reference * candidate).sum(axis=1) / np.maximum(norms, 1e-12)


def labels_agree(reference: np.ndarray, candidate: np.ndarray, atol: float | None = None) -> np.ndarray:
    """Top labels agree, or (with ``atol``) the reference itself cannot tell them apart."""
    ref_top, cand_top = reference.argmax(axis=1), candidate.argmax(axis=1)
    if atol is None:
        return ref_top == cand_top
    rows = np.arange(len(reference))
    tie = reference[rows, ref_top] - reference[rows, cand_top] <= atol
    return (ref_top == cand_top) | tie


@dataclass(frozen=True)
class Task:
    name: str
    auto_model: str  # transformers Auto class that loads the checkpoint for this task
    architecture_suffixes: tuple[str, ...]  # config.json ``architectures`` endings that select it
    model_output: str  # name of the exported ONNX graph's output
    model_output_has_sequence_axis: bool  # [batch, seq, X] rather than [batch, X]
    postprocess_inputs: tuple[str, ...]  # tensors the postprocess step reads
    token_alignment: bool  # the tokenizer also emits offsets and a special-token mask
    outputs: tuple[OutputTensor, ...]  # ensemble outputs besides TRUNCATED; -2 = filled at export
    answer: str  # ANSWER_*: what the client decodes the outputs into
    comparison: Comparison  # how parity, the accuracy guard and verify compare two answers
    pooled: bool  # the answer pools hidden states over tokens (sentence-transformers pooling applies)
    labelled: bool  # the checkpoint must name its labels (id2label); HIDDEN is then the label count
    # Takes an optional second text per row (TEXT_PAIR), tokenized with the checkpoint's pair template.
    text_pairs: bool = False
    single_label: bool = False  # one output label (a cross-encoder's relevance logit), not classes
    # An empty TEXT_PAIR means "no pair": transformers' tokenizer(text, text_pair="") (and so the
    # text-classification pipeline) encodes the text alone; CrossEncoder scores an empty document.
    empty_pair_alone: bool = False

    @property
    def served_outputs(self) -> tuple[str, ...]:
        """Every output a client requests from the ensemble, ``TRUNCATED`` included."""
        return tuple(output.name for output in self.outputs) + (contract.OUTPUT_TRUNCATED,)


HIDDEN = -2  # placeholder dim: hidden size or number of labels, known only per checkpoint

EMBEDDINGS = Task(
    name="embeddings",
    auto_model="AutoModel",
    architecture_suffixes=("Model", "ForMaskedLM", "ForPreTraining"),
    model_output="last_hidden_state",
    model_output_has_sequence_axis=True,
    postprocess_inputs=("last_hidden_state", "attention_mask"),
    token_alignment=False,
    outputs=(OutputTensor(contract.OUTPUT_EMBEDDING, "TYPE_FP32", (HIDDEN,)),),
    answer=ANSWER_EMBEDDING,
    comparison=Comparison(METRIC_COSINE, per_token=False, parity_threshold=0.9999, served=ANSWER_EMBEDDING),
    pooled=True,
    labelled=False,
)

SEQUENCE_CLASSIFICATION = Task(
    name="sequence-classification",
    auto_model="AutoModelForSequenceClassification",
    architecture_suffixes=("ForSequenceClassification",),
    model_output="logits",
    model_output_has_sequence_axis=False,
    postprocess_inputs=("logits",),
    token_alignment=False,
    outputs=(
        OutputTensor(contract.OUTPUT_LABEL, "TYPE_STRING", (1,)),
        OutputTensor(contract.OUTPUT_SCORES, "TYPE_FP32", (HIDDEN,)),
    ),
    answer=ANSWER_CLASSIFICATION,
    comparison=Comparison(METRIC_LABELS, per_token=False, parity_threshold=1.0, served=ANSWER_CLASSIFICATION),
    pooled=False,
    labelled=True,
    text_pairs=True,
    empty_pair_alone=True,
)

# A cross-encoder (sentence-transformers CrossEncoder): one logit per (query, document) pair, turned
# into a score by the checkpoint's activation (sigmoid by default). Chosen for sequence classifiers
# with one label (see hf2triton.export.checkpoint.detect_task), or with --task rerank.
RERANK = Task(
    name="rerank",
    auto_model="AutoModelForSequenceClassification",
    architecture_suffixes=(),
    model_output="logits",
    model_output_has_sequence_axis=False,
    postprocess_inputs=("logits",),
    token_alignment=False,
    outputs=(OutputTensor(contract.OUTPUT_SCORES, "TYPE_FP32", (1,)),),
    answer=ANSWER_SCORE,
    comparison=Comparison(METRIC_SCORES, per_token=False, parity_threshold=1.0, served=ANSWER_SCORE),
    pooled=False,
    labelled=True,  # id2label has the one label (LABEL_0): the logit width the steps check
    text_pairs=True,
    single_label=True,
)

# Entities are ragged (any number per text): one JSON document per text needs no padding.
TOKEN_CLASSIFICATION = Task(
    name="token-classification",
    auto_model="AutoModelForTokenClassification",
    architecture_suffixes=("ForTokenClassification",),
    model_output="logits",
    model_output_has_sequence_axis=True,
    postprocess_inputs=(
        contract.INPUT_TEXT,
        "input_ids",
        contract.TENSOR_OFFSETS,
        contract.TENSOR_SPECIAL_TOKENS,
        "logits",
    ),
    token_alignment=True,
    outputs=(OutputTensor(contract.OUTPUT_ENTITIES, "TYPE_STRING", (1,)),),
    answer=ANSWER_ENTITIES,
    # Entities are built from token labels: parity and the guard compare every real token's label.
    comparison=Comparison(METRIC_LABELS, per_token=True, parity_threshold=1.0, served=ANSWER_ENTITIES),
    pooled=False,
    labelled=True,
)

TASKS: dict[str, Task] = {t.name: t for t in (EMBEDDINGS, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, RERANK)}


def task_for_architectures(architectures: tuple[str, ...]) -> Task | None:
    """The task whose architecture suffix matches; the most specific (longest) suffix wins."""
    best: tuple[int, Task] | None = None
    for arch in architectures:
        for task in TASKS.values():
            for suffix in task.architecture_suffixes:
                if arch.endswith(suffix) and (best is None or len(suffix) > best[0]):
                    best = (len(suffix), task)
    return best[1] if best else None
