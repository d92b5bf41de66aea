"""Postprocess step: raw model outputs in, task answers out (vectorised numpy).

embeddings: pooling over the attention mask (mean, cls, max, mean_sqrt_len) and
optional L2 normalisation, as the checkpoint's sentence-transformers config says.
sequence-classification: softmax (or sigmoid for multi-label) and the top label.
"""

from __future__ import annotations

import json

import numpy as np

try:  # only importable inside tritonserver's python stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised outside Triton
    pb_utils = None

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")
# Output names; equal to hf2triton.contract's (this file cannot import hf2triton when served).
LABEL_OUTPUT, SCORES_OUTPUT = "LABEL", "SCORES"


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Pool [n, seq, h] hidden states over the positions where mask is 1 → [n, h]."""
    weights = mask.astype(hidden.dtype)[:, :, None]
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return np.where(weights > 0, hidden, np.finfo(hidden.dtype).min).max(axis=1)
    summed = (hidden * weights).sum(axis=1)
    counts = np.clip(weights.sum(axis=1), 1e-9, None)
    if mode == "mean":
        return summed / counts
    if mode == "mean_sqrt_len":
        return summed / np.sqrt(counts)
    raise ValueError(f"unknown pooling mode {mode!r}; expected one of {POOLING_MODES}")


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.clip(norms, 1e-12, None)


def embed(hidden: np.ndarray, mask: np.ndarray, mode: str, normalize: bool) -> np.ndarray:
    pooled = pool(hidden, mask, mode)
    return (l2_normalize(pooled) if normalize else pooled).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def classify(logits: np.ndarray, labels: list[str], multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [n, L] (float32) and top label names [n] (bytes objects)."""
    probs = (sigmoid(logits) if multi_label else softmax(logits)).astype(np.float32)
    names = np.array([label.encode() for label in labels], dtype=object)
    return probs, names[probs.argmax(axis=1)]


class TritonPythonModel:
    """The postprocess step as a Triton python-backend model."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.task = params["task"]
        self.settings = json.loads(params["settings"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests):
        inputs = [
            {n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.input_names}
            for r in requests
        ]
        return [pb_utils.InferenceResponse(output_tensors=self._answer(feed)) for feed in inputs]

    def _answer(self, feed: dict[str, np.ndarray]) -> list:
        if self.task == "embeddings":
            vectors = embed(
                feed["last_hidden_state"],
                feed["attention_mask"],
                self.settings["pooling"],
                self.settings["normalize"],
            )
            return [pb_utils.Tensor(self.output_names[0], vectors)]
        probs, top = classify(feed["logits"], self.settings["labels"], self.settings["multi_label"])
        by_name = {LABEL_OUTPUT: top.reshape(-1, 1), SCORES_OUTPUT: probs}
        return [pb_utils.Tensor(name, by_name[name]) for name in self.output_names]
