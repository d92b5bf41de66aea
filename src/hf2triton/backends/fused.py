"""Fused layout: tokenizer + ONNX Runtime + postprocess in one python-backend model.

The same client contract as the ensemble (``TEXT`` in; ``EMBEDDING`` or ``LABEL`` +
``SCORES``, and ``TRUNCATED`` out; the ensemble's parameters on this model's config),
without the two extra hops between steps. All texts of all requests in one
``execute`` call are tokenized in one Rust batch call, sorted by length and run in
padding-minimal sub-batches of at most ``max_batch_tokens`` positions (0: grouped by
sequence-length bucket instead), each postprocessed on its own. A version exported with
a packed graph (``model.packed.onnx``) may also run several texts per row (rows of up to
``pack_tokens``), where that costs less than padding (``batching.pack_call``). A bad
request gets its own error; if the merged run raises, each request is run on its own
so only the culprit fails.

Self-contained when served: the step modules are copied beside this file
(``tokenizer.py``, ``batching.py``, ``onnx_model.py``, ``postprocess.py``) and imported from there.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:  # as hf2triton.backends.fused, or as "<version>.model" inside tritonserver's stub
    from . import batching, onnx_model, postprocess, tokenizer
except ImportError:  # imported as a top-level module: the step modules sit beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import batching  # type: ignore[no-redef]
    import onnx_model  # type: ignore[no-redef]
    import postprocess  # type: ignore[no-redef]
    import tokenizer  # type: ignore[no-redef]

try:  # only importable inside tritonserver's python stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised outside Triton
    pb_utils = None

STEP_MODULES = ("tokenizer", "batching", "onnx_model", "postprocess")  # copied beside model.py
EMBEDDING_OUTPUT = "EMBEDDING"  # equal to hf2triton.contract's
TOKENS_OUTPUT = "TOKENS"  # equal to hf2triton.contract.OUTPUT_TOKENS: tokens read per text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnswerSettings:
    """What the postprocess needs: the task and its settings (pooling, labels)."""

    task: str
    model_output: str  # the ONNX output the postprocess reads: last_hidden_state or logits
    pooling: str = "mean"
    normalize: bool = True
    labels: tuple[str, ...] = ()
    multi_label: bool = False
    activation: str = ""  # rerank: the cross-encoder's activation

    @classmethod
    def from_json(cls, text: str) -> "AnswerSettings":
        raw = json.loads(text)
        return cls(raw["task"], raw["model_output"], raw.get("pooling", "mean"), bool(raw.get("normalize", True)),
                   tuple(raw.get("labels", ())), bool(raw.get("multi_label", False)), raw.get("activation", ""))

    def to_json(self) -> str:
        return json.dumps({"task": self.task, "model_output": self.model_output, "pooling": self.pooling,
                           "normalize": self.normalize, "labels": list(self.labels),
                           "multi_label": self.multi_label, "activation": self.activation})


def answer(hidden_or_logits: np.ndarray, mask: np.ndarray, settings: AnswerSettings) -> dict[str, np.ndarray]:
    """Task outputs for one bucket's rows."""
    if settings.task == "embeddings":
        return {EMBEDDING_OUTPUT: postprocess.embed(hidden_or_logits, mask, settings.pooling, settings.normalize)}
    if settings.task == "rerank":
        return {postprocess.SCORES_OUTPUT: postprocess.relevance(hidden_or_logits, settings.activation)}
    probs, top = postprocess.classify(hidden_or_logits, list(settings.labels), settings.multi_label)
    return {postprocess.LABEL_OUTPUT: top.reshape(-1, 1), postprocess.SCORES_OUTPUT: probs}


def padded_calls(session, encodings: list, lengths: np.ndarray, token_settings, model_output: str,
                 max_batch_tokens: int):
    """(text indices, raw output, attention mask) per ONNX Runtime call of a padded graph:
    texts sorted by length under ``max_batch_tokens`` (> 0), else grouped by bucket."""
    if max_batch_tokens > 0:
        groups = [(indices, int(lengths[indices].max())) for indices in
                  batching.plan_batches(lengths, max_batch_tokens)]
    else:
        by_bucket: dict[int, list[int]] = {}
        for index, length in enumerate(lengths):
            by_bucket.setdefault(tokenizer.choose_bucket(int(length), token_settings.buckets), []).append(index)
        groups = [(np.array(indices), bucket) for bucket, indices in by_bucket.items()]
    for indices, width in groups:
        batch = tokenizer.pad_to_width([encodings[i] for i in indices], token_settings, max(width, 1))
        (raw,) = session.run([model_output], batch.arrays)
        yield indices, raw, batch.arrays["attention_mask"]


def packed_calls(session, encodings: list, lengths: np.ndarray, token_settings, model_output: str,
                 max_batch_tokens: int, row_tokens: int):
    """The same per call of a packed graph (``onnx_model.PACKED_FILE``): several texts per
    row. A classifier's graph answers one row per text (its mask is then unused)."""
    token_ids = [encoding.ids for encoding in encodings]
    names = onnx_model.input_names(session)
    type_ids = [encoding.type_ids for encoding in encodings] if batching.TOKEN_TYPES in names else None
    for rows in batching.pack_calls(lengths, row_tokens, max_batch_tokens):
        batch = batching.packed_batch(token_ids, rows, token_settings.pad_id, type_ids)
        (raw,) = session.run([model_output], batch.feeds_for(names))
        if batching.TEXT_STARTS in names:
            yield np.array(batch.texts), raw, np.ones((len(batch.texts), 1), dtype=np.int64)
        else:
            padded, mask = batching.unpack(raw, batch, lengths, batch.texts)
            yield np.array(batch.texts), padded, mask


def run_texts(session, token_settings, settings: AnswerSettings, texts: list[str], encoder,
              truncated_output: str = "TRUNCATED", max_batch_tokens: int = 0,
              pairs: list | None = None, packed_rows: int = 0) -> dict[str, np.ndarray]:
    """The whole pipeline on ``texts``: one tokenizer call, then one ONNX Runtime call per sub-batch.

    ``encoder`` is a loaded ``tokenizers.Tokenizer``; outputs come back in text order.
    Sub-batches: texts sorted by length under ``max_batch_tokens`` (> 0), else by bucket.
    ``packed_rows`` > 0: ``session`` runs a packed graph, rows of about this many tokens.
    ``pairs`` (optional) holds each text's second text, or None for a text sent alone.
    """
    if pairs is not None and any(pair is not None for pair in pairs):
        encodings = tokenizer.tokenize_mixed(encoder, texts, pairs, token_settings)
    else:
        encodings = tokenizer.tokenize(encoder, texts, token_settings)
    lengths = np.array([len(encoding.ids) for encoding in encodings], dtype=np.int64)
    truncated = np.array([bool(encoding.overflowing) for encoding in encodings], dtype=bool)
    if packed_rows > 0:
        calls = packed_calls(session, encodings, lengths, token_settings, settings.model_output,
                             max_batch_tokens, packed_rows)
    else:
        calls = padded_calls(session, encodings, lengths, token_settings, settings.model_output, max_batch_tokens)
    parts: dict[str, list[np.ndarray]] = {}
    order: list[int] = []
    for indices, raw, mask in calls:
        outputs = answer(raw, mask, settings)
        outputs[truncated_output] = truncated[indices].reshape(-1, 1)
        outputs[TOKENS_OUTPUT] = lengths[indices].reshape(-1, 1)
        for name, array in outputs.items():
            parts.setdefault(name, []).append(array)
        order.extend(int(i) for i in indices)
    if not order:
        return {}
    inverse = np.argsort(np.array(order))
    return {name: np.concatenate(arrays)[inverse] for name, arrays in parts.items()}


class TritonPythonModel:
    """The fused pipeline as a Triton python-backend model."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.token_settings = tokenizer.TokenizerSettings.from_json(params["settings"])
        self.answer_settings = AnswerSettings.from_json(params["answer"])
        tokenizer.tokenize_serially()
        self.encoder = tokenizer.load_tokenizer(version_dir / "tokenizer.json", self.token_settings.max_length)
        threads = onnx_model.threads_per_instance(
            int(params.get("intra_op_threads", "0")), onnx_model.instance_count(config)
        )
        self.sessions, self.packed_rows = onnx_model.served_sessions(version_dir, params, threads, args)
        self.text_input = config["input"][0]["name"]
        self.truncated_output = params["truncated_output"]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        self.max_batch_tokens = int(params.get("max_batch_tokens", "0"))
        self.pair_input = next((t["name"] for t in config["input"] if t["name"] == tokenizer.PAIR_INPUT), None)
        self.empty_pair_alone = params.get("empty_pair_alone", "false") == "true"
        self.text_options = tokenizer.TextOptions.from_json(params.get("text_options", "{}"))

    def execute(self, requests):
        responses: list = [None] * len(requests)
        texts_per_request, pairs_per_request, valid, dimensions = [], [], [], []
        for i, request in enumerate(requests):
            raw = pb_utils.get_input_tensor_by_name(request, self.text_input).as_numpy()
            try:
                texts = tokenizer.decode_texts(raw, self.token_settings.max_text_bytes)
                parameters = tokenizer.request_parameters(request.parameters())
                prompt = tokenizer.resolve_prompt(parameters, self.text_options)  # also checks dimensions
                pairs = tokenizer.request_pairs(request, self.pair_input, len(texts), self.token_settings,
                                                self.empty_pair_alone)
                texts_per_request.append([prompt + text for text in texts] if prompt else texts)
                pairs_per_request.append(pairs)
                dimensions.append(parameters.get(tokenizer.PARAM_DIMENSIONS))
                valid.append(i)
            except tokenizer.TextInputError as exc:
                responses[i] = _error_response(str(exc), pb_utils.TritonError.INVALID_ARG)
        for i, outputs, size in zip(valid, self._run(texts_per_request, pairs_per_request), dimensions):
            if isinstance(outputs, Exception):
                responses[i] = _error_response(f"fused model failed on this request: {outputs}",
                                               pb_utils.TritonError.INTERNAL)
                continue
            if EMBEDDING_OUTPUT in outputs:
                outputs[EMBEDDING_OUTPUT] = postprocess.truncate_dimensions(
                    outputs[EMBEDDING_OUTPUT], size, self.answer_settings.normalize)
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(outputs[name])) for name in self.output_names]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def _run_texts(self, texts: list[str], pairs: list | None = None) -> dict[str, np.ndarray]:
        with self.sessions.session_for(len(texts) == 1) as session:
            return run_texts(session, self.token_settings, self.answer_settings, texts, self.encoder,
                             self.truncated_output, self.max_batch_tokens, pairs, self.packed_rows)

    def _run(self, texts_per_request: list[list[str]], pairs_per_request: list) -> list:
        """Each request's outputs (or its exception): all in one run, else one run per request."""
        pairs = [pair for texts, found in zip(texts_per_request, pairs_per_request)
                 for pair in (found if found is not None else [None] * len(texts))]
        try:
            outputs = self._run_texts([text for texts in texts_per_request for text in texts], pairs)
        except Exception:  # noqa: BLE001 - isolate whichever request raised, whatever it raised
            logger.exception("a batched run of %d requests failed; retrying them one by one", len(texts_per_request))
            return [self._run_one(texts, found) for texts, found in zip(texts_per_request, pairs_per_request)]
        answers, start = [], 0
        for texts in texts_per_request:
            answers.append({name: outputs[name][start : start + len(texts)] for name in self.output_names})
            start += len(texts)
        return answers

    def _run_one(self, texts: list[str], pairs: list[str] | None = None):
        try:
            return self._run_texts(texts, pairs)
        except Exception as exc:  # noqa: BLE001 - becomes this request's error response
            return exc


def _error_response(message: str, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
