"""Postprocess step: raw model outputs in, task answers out (vectorised numpy).

embeddings: pooling over the attention mask (mean, cls, max, mean_sqrt_len) and
optional L2 normalisation, as the checkpoint's sentence-transformers config says.
sequence-classification: softmax (or sigmoid for multi-label) and the top label.
rerank: the cross-encoder's one logit per pair through its activation (sigmoid by default).
token-classification: entities as transformers' TokenClassificationPipeline finds them
(aggregation none/simple/first/average/max, same words, spans and scores), one JSON
list per text.

Any client can call this step directly: each request is checked on its own
(:func:`check_inputs`) and answered on its own, so a bad one fails alone.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

try:  # only importable inside tritonserver's python stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised outside Triton
    pb_utils = None

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")
# Output names; equal to hf2triton.contract's (this file cannot import hf2triton when served).
LABEL_OUTPUT, SCORES_OUTPUT, EMBEDDING_OUTPUT = "LABEL", "SCORES", "EMBEDDING"
TEXT_INPUT, OFFSETS_INPUT, SPECIAL_TOKENS_INPUT = "TEXT", "offset_mapping", "special_tokens_mask"
AGGREGATIONS = ("none", "simple", "first", "average", "max")
# Expected dtype and rank of each input this step may take.
INPUT_KINDS = {
    "last_hidden_state": (np.float32, 3), "logits": (np.float32, None), "attention_mask": (np.int64, 2),
    "input_ids": (np.int64, 2), OFFSETS_INPUT: (np.int64, 3), SPECIAL_TOKENS_INPUT: (np.int64, 2),
    TEXT_INPUT: (np.object_, 2), "window_text": (np.int64, 2),
}

logger = logging.getLogger(__name__)


class RequestError(ValueError):
    """A request's tensors are unusable; the message names the tensor, the problem and the limit."""


def check_inputs(feed: dict[str, np.ndarray], task: str, width: int) -> None:
    """Refuse tensors that do not fit together: dtype, rank, rows, positions, labels/hidden width.

    ``width`` is the hidden size (embeddings) or the number of labels (0 = not checked).
    """
    logits_rank = 3 if task == "token-classification" else 2
    for name, array in feed.items():
        dtype, rank = INPUT_KINDS.get(name, (None, None))
        rank = logits_rank if name == "logits" else rank
        if dtype is not None and array.dtype != dtype:
            raise RequestError(f"{name} must be {np.dtype(dtype).name}, got {array.dtype}")
        if rank is not None and array.ndim != rank:
            raise RequestError(f"{name} must have {rank} dimensions, got shape {list(array.shape)}")
    rows = {name: array.shape[0] for name, array in feed.items()}
    if len(set(rows.values())) > 1:
        raise RequestError(f"inputs must have one batch size, got {rows}")
    lengths = {name: array.shape[1] for name, array in feed.items() if array.ndim >= 2
               and name not in (TEXT_INPUT, "window_text")  # one per row, no sequence axis
               and not (name == "logits" and logits_rank == 2)}
    if len(set(lengths.values())) > 1:
        raise RequestError(f"inputs must have one sequence length, got {lengths}")
    output = feed.get("last_hidden_state", feed.get("logits"))
    if width and output is not None and output.shape[-1] != width:
        raise RequestError(f"{'last_hidden_state' if task == 'embeddings' else 'logits'} has width "
                           f"{output.shape[-1]}, the model's is {width}")
    if OFFSETS_INPUT in feed and feed[OFFSETS_INPUT].shape[-1] != 2:
        raise RequestError(f"{OFFSETS_INPUT} must have shape [batch, sequence, 2]")
    if "input_ids" in feed and feed["input_ids"].size and feed["input_ids"].min() < 0:
        raise RequestError("input_ids must not be negative")
    for name in ("attention_mask", SPECIAL_TOKENS_INPUT):
        if name in feed and not np.isin(feed[name], (0, 1)).all():
            raise RequestError(f"{name} must hold only 0 and 1")


def check_offsets(texts: list[str], offsets: np.ndarray, special: np.ndarray) -> None:
    """Word tokens' character spans must lie inside their text."""
    for row, text in enumerate(texts):
        spans = offsets[row][special[row] == 0]
        if spans.size and (spans.min() < 0 or (spans[:, 0] > spans[:, 1]).any() or spans.max() > len(text)):
            raise RequestError(f"{OFFSETS_INPUT}[{row}] holds spans outside TEXT[{row}] (0..{len(text)} characters)")


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
    """Softmax over the last axis (labels)."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def classify(logits: np.ndarray, labels: list[str], multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities [n, L] (float32) and top label names [n] (bytes objects)."""
    probs = (sigmoid(logits) if multi_label else softmax(logits)).astype(np.float32)
    names = np.array([label.encode() for label in labels], dtype=object)
    return probs, names[probs.argmax(axis=1)]


ACTIVATIONS = ("sigmoid", "identity", "tanh")  # a cross-encoder's (sentence-transformers CrossEncoder)


def relevance(logits: np.ndarray, activation: str) -> np.ndarray:
    """Rerank scores [n, 1] (float32) from one logit per pair, as ``CrossEncoder.predict`` applies it."""
    if activation == "sigmoid":
        scores = sigmoid(logits)
    elif activation == "tanh":
        scores = np.tanh(logits)
    elif activation == "identity":
        scores = logits
    else:
        raise ValueError(f"unknown activation {activation!r}; expected one of {ACTIVATIONS}")
    return scores.astype(np.float32).reshape(-1, 1)


# ----------------------------------------------------------------- token classification


@dataclass(frozen=True)
class EntitySettings:
    labels: tuple[str, ...]  # id2label in id order
    aggregation: str = "simple"
    ignore_labels: tuple[str, ...] = ("O",)  # the pipeline's default: "outside" is no entity
    word_aware: bool = False  # the tokenizer marks continuing subwords (WordPiece "##")
    unk_id: int | None = None  # unknown tokens show the text they stand for

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation {self.aggregation!r}: expected one of {AGGREGATIONS}")

    @classmethod
    def from_dict(cls, raw: dict) -> "EntitySettings":
        return cls(
            labels=tuple(raw["labels"]),
            aggregation=raw["aggregation"],
            ignore_labels=tuple(raw.get("ignore_labels", ("O",))),
            word_aware=bool(raw["word_aware"]),
            unk_id=raw.get("unk_id"),
        )


@dataclass(frozen=True)
class Tokens:
    """One text's word tokens (special tokens and padding dropped), in order."""

    index: np.ndarray  # int [T]: position in the model's sequence
    words: list[str]  # token strings (the text itself for unknown tokens)
    start: np.ndarray  # int [T]: character offsets into the text
    end: np.ndarray
    is_subword: np.ndarray  # bool [T]: continues the previous token's word
    probs: np.ndarray  # float32 [T, labels]


def word_tokens(
    text: str, ids: np.ndarray, offsets: np.ndarray, special: np.ndarray, probs: np.ndarray,
    tokenizer: Tokenizer, settings: EntitySettings,
) -> Tokens:
    """The pipeline's ``gather_pre_entities``: token strings, spans and the subword heuristic."""
    index = np.flatnonzero(special == 0)
    words, subword = [], np.zeros(len(index), dtype=bool)
    for k, i in enumerate(index):
        token_id, (start, end) = int(ids[i]), (int(offsets[i, 0]), int(offsets[i, 1]))
        word = tokenizer.id_to_token(token_id) or ""
        if token_id == settings.unk_id:
            words.append(text[start:end])
            continue
        if settings.word_aware:
            subword[k] = len(word) != end - start  # a "##" prefix makes it longer than its text
        else:  # no word boundaries in the vocabulary: a token not after a space continues a word
            subword[k] = start > 0 and " " not in text[start - 1 : start + 1]
        words.append(word)
    return Tokens(index, words, offsets[index, 0], offsets[index, 1], subword, probs[index])


def decode_tokens(tokenizer: Tokenizer, tokens: list[str]) -> str:
    """transformers' ``convert_tokens_to_string`` for fast tokenizers."""
    return tokenizer.decoder.decode(tokens) if tokenizer.decoder is not None else " ".join(tokens)


def group_starts(is_new: np.ndarray) -> np.ndarray:
    """Indices where groups begin (the first item always begins one)."""
    is_new = is_new.copy()
    if len(is_new):
        is_new[0] = True
    return np.flatnonzero(is_new)


def word_scores(tokens: Tokens, aggregation: str) -> tuple[np.ndarray, np.ndarray]:
    """Per word: the probabilities it is labelled by [W, L] and its first-token index [W].

    simple/none keep every token; first/average/max fold subwords into their word.
    """
    if aggregation in ("none", "simple"):
        return tokens.probs, np.arange(len(tokens.words))
    starts = group_starts(~tokens.is_subword)
    if aggregation == "first":
        return tokens.probs[starts], starts
    if aggregation == "average":
        counts = np.diff(np.append(starts, len(tokens.words)))[:, None]
        return np.add.reduceat(tokens.probs, starts, axis=0) / counts, starts
    # max: the probabilities of the word's most confident token (the first on ties)
    word_of = np.cumsum(np.isin(np.arange(len(tokens.words)), starts)) - 1
    confidence = tokens.probs.max(axis=1)
    order = np.lexsort((np.arange(len(word_of)), -confidence, word_of))
    best = order[group_starts(np.diff(word_of[order], prepend=-1) != 0)]
    return tokens.probs[best], starts


def split_tag(label: str) -> tuple[str, str]:
    """("B"|"I", tag); a label without a B-/I- prefix continues like I- (as the pipeline does)."""
    if label.startswith(("B-", "I-")):
        return label[0], label[2:]
    return "I", label


@dataclass(frozen=True)
class LabelledWords:
    """Words (tokens with simple/none) with their top label, score, text and span."""

    labels: list[str]
    scores: np.ndarray
    words: list[str]
    start: np.ndarray
    end: np.ndarray


def label_words(tokens: Tokens, tokenizer: Tokenizer, settings: EntitySettings) -> LabelledWords:
    probs, firsts = word_scores(tokens, settings.aggregation)
    label_ids = probs.argmax(axis=1)
    lasts = np.append(firsts[1:], len(tokens.words)) - 1
    if settings.aggregation in ("none", "simple"):
        words = tokens.words
    else:
        words = [decode_tokens(tokenizer, tokens.words[a : b + 1]) for a, b in zip(firsts, lasts)]
    return LabelledWords(
        labels=[settings.labels[i] for i in label_ids],
        scores=probs[np.arange(len(probs)), label_ids],
        words=words,
        start=tokens.start[firsts],
        end=tokens.end[lasts],
    )


def group_entities(words: LabelledWords, tokenizer: Tokenizer, settings: EntitySettings) -> list[dict]:
    """Adjacent words with the same tag form one entity; a B- label always starts a new one."""
    tags = [split_tag(label) for label in words.labels]
    new_group = np.array([k == 0 or bi == "B" or tag != tags[k - 1][1] for k, (bi, tag) in enumerate(tags)])
    firsts = group_starts(new_group)
    entities = []
    for a, b in zip(firsts, np.append(firsts[1:], len(tags))):
        group = words.labels[a].split("-", 1)[-1]  # the pipeline names groups this way, not by split_tag
        if group not in settings.ignore_labels:
            entities.append({
                "entity_group": group,
                "score": float(np.mean(words.scores[a:b])),
                "word": decode_tokens(tokenizer, words.words[a:b]),
                "start": int(words.start[a]),
                "end": int(words.end[b - 1]),
            })
    return entities


def token_entities(tokens: Tokens, tokenizer: Tokenizer, settings: EntitySettings) -> list[dict]:
    """Entities of one text, exactly as ``TokenClassificationPipeline`` reports them."""
    if not tokens.words:
        return []
    words = label_words(tokens, tokenizer, settings)
    if settings.aggregation != "none":
        return group_entities(words, tokenizer, settings)
    return [
        {"entity": label, "score": float(words.scores[k]), "index": int(tokens.index[k]), "word": words.words[k],
         "start": int(words.start[k]), "end": int(words.end[k])}
        for k, label in enumerate(words.labels)
        if label not in settings.ignore_labels
    ]


def find_entities(
    texts: list[str], ids: np.ndarray, offsets: np.ndarray, special: np.ndarray, logits: np.ndarray,
    tokenizer: Tokenizer, settings: EntitySettings,
) -> list[list[dict]]:
    """Entities per text from a padded batch (softmax over all tokens at once)."""
    probs = softmax(logits.astype(np.float32))
    return [
        token_entities(word_tokens(text, ids[r], offsets[r], special[r], probs[r], tokenizer, settings),
                       tokenizer, settings)
        for r, text in enumerate(texts)
    ]


# ----------------------------------------------------------------- long texts (windows) and dimensions
#
# A windowed export's tokenizer step sends one row per window, ``window_text`` (the row's
# text index in the request) and the text itself on the text's first row (as TEXT).

WINDOW_TEXT, PARAM_DIMENSIONS = "window_text", "dimensions"  # = the tokenizer step's names


def check_owners(owner: np.ndarray) -> int:
    """Rows must belong to texts 0, 1, ... in order, each text's rows together; returns the text count."""
    owner = owner.reshape(-1)
    if not owner.size or owner[0] != 0 or not np.isin(np.diff(owner), (0, 1)).all():
        raise RequestError(f"{WINDOW_TEXT} must number texts 0, 1, ... in row order, got {owner.tolist()[:20]}")
    return int(owner[-1]) + 1


def merge_windows(pooled: np.ndarray, counts: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Per text, the token-count-weighted mean of its windows' pooled vectors: sum(n_i v_i) / sum(n_i)."""
    owner = owner.reshape(-1)
    texts = check_owners(owner)
    weights = counts.astype(np.float64)
    sums = np.zeros((texts, pooled.shape[1]), dtype=np.float64)
    np.add.at(sums, owner, pooled.astype(np.float64) * weights[:, None])
    totals = np.bincount(owner, weights=weights, minlength=texts)
    return (sums / np.clip(totals, 1e-9, None)[:, None]).astype(np.float32)


def embed_windows(hidden: np.ndarray, mask: np.ndarray, owner: np.ndarray, mode: str, normalize: bool) -> np.ndarray:
    """One vector per text from its windows: each window pooled as usual (not normalised), merged
    by :func:`merge_windows` (weights = the window's attended tokens, specials included), then the
    model's normalisation."""
    merged = merge_windows(pool(hidden, mask, mode), mask.sum(axis=1), owner)
    return (l2_normalize(merged) if normalize else merged).astype(np.float32)


def truncate_dimensions(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """Matryoshka: the first ``dimensions`` components, re-normalised when the model normalises."""
    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    kept = vectors[:, :dimensions]
    return np.ascontiguousarray(l2_normalize(kept) if normalize else kept, dtype=np.float32)


def requested_dimensions(parameters: dict, width: int) -> int | None:
    """The request's ``dimensions`` parameter, checked against 1..``width`` (None: all)."""
    value = parameters.get(PARAM_DIMENSIONS)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= width:
        raise RequestError(f"dimensions must be an integer in 1..{width} (the embedding size), got {value!r}")
    return value


def aggregate_overlapping_entities(entities: list[dict]) -> list[dict]:
    """transformers' ``TokenClassificationPipeline.aggregate_overlapping_entities``: of entities that
    overlap (found in two windows), keep the longer one, the higher score on equal lengths."""
    if not entities:
        return entities
    entities = sorted(entities, key=lambda x: x["start"])
    kept, previous = [], entities[0]
    for entity in entities:
        if previous["start"] <= entity["start"] < previous["end"]:
            length, previous_length = entity["end"] - entity["start"], previous["end"] - previous["start"]
            if length > previous_length or (length == previous_length and entity["score"] > previous["score"]):
                previous = entity
        else:
            kept.append(previous)
            previous = entity
    kept.append(previous)
    return kept


def find_entities_windowed(
    sources: list[str], owner: np.ndarray, ids: np.ndarray, offsets: np.ndarray, special: np.ndarray,
    logits: np.ndarray, tokenizer: Tokenizer, settings: EntitySettings,
) -> list[list[dict]]:
    """Entities per text from its windows, as the pipeline with ``stride`` finds them: each window's
    entities (offsets index the whole text), concatenated, then overlaps resolved."""
    owner = owner.reshape(-1)
    texts = [sources[row] for row in np.flatnonzero(np.diff(owner, prepend=-1) != 0)]
    probs = softmax(logits.astype(np.float32))
    found: list[list[dict]] = [[] for _ in texts]
    for row, text_index in enumerate(owner):
        text = texts[text_index]
        tokens = word_tokens(text, ids[row], offsets[row], special[row], probs[row], tokenizer, settings)
        found[text_index].extend(token_entities(tokens, tokenizer, settings))
    windows = np.bincount(owner, minlength=len(texts))
    return [aggregate_overlapping_entities(e) if windows[t] > 1 else e for t, e in enumerate(found)]


def entities_tensor(entities: list[list[dict]]) -> np.ndarray:
    """One UTF-8 JSON list per text: BYTES [n, 1]."""
    return np.array([[json.dumps(e, ensure_ascii=False).encode()] for e in entities], dtype=object)


def as_texts(raw: np.ndarray) -> list[str]:
    texts = []
    for index, item in enumerate(raw.reshape(-1)):
        try:
            texts.append(item.decode("utf-8") if isinstance(item, bytes) else str(item))
        except UnicodeDecodeError as exc:
            raise RequestError(f"TEXT[{index}] is not valid UTF-8 (invalid byte at offset {exc.start})") from None
    return texts


class TritonPythonModel:
    """The postprocess step as a Triton python-backend model."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.task = params["task"]
        self.settings = json.loads(params["settings"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        # The hidden size (EMBEDDING's dims) or the number of labels, which the model output must match.
        dims = {t["name"]: [int(d) for d in t.get("dims", [])] for t in config["output"]}
        self.width = (dims.get(EMBEDDING_OUTPUT) or [len(self.settings.get("labels", ()))])[-1]
        if self.task == "token-classification":
            version_dir = Path(args["model_repository"]) / args["model_version"]
            self.tokenizer = Tokenizer.from_file(str(version_dir / "tokenizer.json"))
            self.entity_settings = EntitySettings.from_dict(self.settings)

    def execute(self, requests):
        return [self._respond(request) for request in requests]

    def _respond(self, request):
        """One request's answer or its own error: nothing here can fail a batch-mate."""
        try:
            feed = {n: pb_utils.get_input_tensor_by_name(request, n).as_numpy() for n in self.input_names}
            check_inputs(feed, self.task, self.width)
            if self.task == "embeddings":
                parameters = json.loads(request.parameters() or "{}")
                return pb_utils.InferenceResponse(output_tensors=self._embeddings(feed, parameters))
            return pb_utils.InferenceResponse(output_tensors=self._answer(feed))
        except RequestError as exc:
            return _error_response(str(exc), pb_utils.TritonError.INVALID_ARG)
        except Exception as exc:  # noqa: BLE001 - an unexpected failure is this request's alone
            logger.exception("postprocess failed on one request")
            return _error_response(f"postprocess step failed on this request: {exc}", pb_utils.TritonError.INTERNAL)

    def _embeddings(self, feed: dict[str, np.ndarray], parameters: dict) -> list:
        """Pooled vectors (merged per text when windowed), cut to the request's ``dimensions``."""
        dimensions = requested_dimensions(parameters, self.width)
        mode, normalize = self.settings["pooling"], self.settings["normalize"]
        hidden, mask = feed["last_hidden_state"], feed["attention_mask"]
        if WINDOW_TEXT in feed:
            vectors = embed_windows(hidden, mask, feed[WINDOW_TEXT], mode, normalize)
        else:
            vectors = embed(hidden, mask, mode, normalize)
        return [pb_utils.Tensor(self.output_names[0], truncate_dimensions(vectors, dimensions, normalize))]

    def _answer(self, feed: dict[str, np.ndarray]) -> list:
        if self.task == "embeddings":
            vectors = embed(
                feed["last_hidden_state"],
                feed["attention_mask"],
                self.settings["pooling"],
                self.settings["normalize"],
            )
            return [pb_utils.Tensor(self.output_names[0], vectors)]
        if self.task == "token-classification":
            texts = as_texts(feed[TEXT_INPUT])
            if WINDOW_TEXT in feed:
                return [pb_utils.Tensor(self.output_names[0], entities_tensor(self._windowed_entities(texts, feed)))]
            check_offsets(texts, feed[OFFSETS_INPUT], feed[SPECIAL_TOKENS_INPUT])
            entities = find_entities(
                texts, feed["input_ids"], feed[OFFSETS_INPUT],
                feed[SPECIAL_TOKENS_INPUT], feed["logits"], self.tokenizer, self.entity_settings,
            )
            return [pb_utils.Tensor(self.output_names[0], entities_tensor(entities))]
        if self.task == "rerank":
            return [pb_utils.Tensor(SCORES_OUTPUT, relevance(feed["logits"], self.settings["activation"]))]
        probs, top = classify(feed["logits"], self.settings["labels"], self.settings["multi_label"])
        by_name = {LABEL_OUTPUT: top.reshape(-1, 1), SCORES_OUTPUT: probs}
        return [pb_utils.Tensor(name, by_name[name]) for name in self.output_names]

    def _windowed_entities(self, sources: list[str], feed: dict[str, np.ndarray]) -> list[list[dict]]:
        owner = feed[WINDOW_TEXT].reshape(-1)
        check_owners(owner)
        first = np.flatnonzero(np.diff(owner, prepend=-1) != 0)
        check_offsets([sources[first[t]] for t in owner], feed[OFFSETS_INPUT], feed[SPECIAL_TOKENS_INPUT])
        return find_entities_windowed(sources, owner, feed["input_ids"], feed[OFFSETS_INPUT],
                                      feed[SPECIAL_TOKENS_INPUT], feed["logits"], self.tokenizer,
                                      self.entity_settings)


def _error_response(message: str, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
