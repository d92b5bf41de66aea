"""The task table: what each supported task exports, serves and returns.

Adding a task is adding a row (Optimum's ``_TASK_TO_COMMON_OUTPUTS`` idea): the
exporter, the repository writer and the client read everything task-specific
from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from hf2triton import contract


@dataclass(frozen=True)
class OutputTensor:
    """One ensemble output: its name, Triton data type and per-row dims (-1 = variable)."""

    name: str
    data_type: str  # a ``model_config_pb2.DataType`` name, e.g. "TYPE_FP32"
    dims: tuple[int, ...]


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
)

TASKS: dict[str, Task] = {t.name: t for t in (EMBEDDINGS, SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION)}


def task_for_architectures(architectures: tuple[str, ...]) -> Task | None:
    """The task whose architecture suffix matches; the most specific (longest) suffix wins."""
    best: tuple[int, Task] | None = None
    for arch in architectures:
        for task in TASKS.values():
            for suffix in task.architecture_suffixes:
                if arch.endswith(suffix) and (best is None or len(suffix) > best[0]):
                    best = (len(suffix), task)
    return best[1] if best else None
