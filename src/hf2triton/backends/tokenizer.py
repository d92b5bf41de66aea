"""Tokenizer step: UTF-8 texts in, padded token-id tensors out.

For token classification (``token_alignment``) it also emits, per token, its
character span in the text (``offset_mapping`` [seq, 2]: Python ``str`` indices,
i.e. code points, so ``text[start:end]`` slices the original) and a mask of the
tokens that are no word (``special_tokens_mask``: special tokens and padding).

All texts of all requests in one ``execute`` call are tokenized in a single
Rust batch call; each request is then padded to the smallest sequence-length
bucket that fits its longest text, so the model step's dynamic batcher can merge
requests of similar length (it only merges equal shapes). With ``ragged`` (the
python model step, which takes ragged batches and sorts texts by length itself)
each request is padded only to its own longest text.

A text's cost is bounded by the max length, not by its size: a long text is tokenized
from a prefix that holds more than max-length tokens, with the same answer (ids,
offsets, ``TRUNCATED``) as the whole text (see :func:`tokenize_bounded`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

try:  # only importable inside tritonserver's python stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised outside Triton
    pb_utils = None

logger = logging.getLogger(__name__)


class TextInputError(ValueError):
    """A request's text is unusable; the message names the text and the limit."""


@dataclass(frozen=True)
class TokenizerSettings:
    max_length: int
    buckets: tuple[int, ...]
    pad_id: int
    max_text_bytes: int
    input_names: tuple[str, ...]  # the model inputs to produce, e.g. input_ids, attention_mask
    token_alignment: bool = False  # also emit offset_mapping and special_tokens_mask
    # The model's embedding sizes (0 = unknown): the model step refuses ids outside them.
    vocab_size: int = 0
    type_vocab_size: int = 0
    ragged: bool = False  # pad each request to its longest text, not to a bucket

    @classmethod
    def from_json(cls, text: str) -> "TokenizerSettings":
        raw = json.loads(text)
        return cls(
            max_length=int(raw["max_length"]),
            buckets=tuple(int(b) for b in raw["buckets"]),
            pad_id=int(raw["pad_id"]),
            max_text_bytes=int(raw["max_text_bytes"]),
            input_names=tuple(raw["input_names"]),
            token_alignment=bool(raw.get("token_alignment", False)),
            vocab_size=int(raw.get("vocab_size", 0)),
            type_vocab_size=int(raw.get("type_vocab_size", 0)),
            ragged=bool(raw.get("ragged", False)),
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "max_length": self.max_length,
                "buckets": list(self.buckets),
                "pad_id": self.pad_id,
                "max_text_bytes": self.max_text_bytes,
                "input_names": list(self.input_names),
                "token_alignment": self.token_alignment,
                "vocab_size": self.vocab_size,
                "type_vocab_size": self.type_vocab_size,
                "ragged": self.ragged,
            }
        )


@dataclass(frozen=True)
class TokenBatch:
    """Model inputs for one request, padded to a bucket, plus per-text truncation flags."""

    arrays: dict[str, np.ndarray]  # name -> int64 [n, bucket] (offset_mapping: [n, bucket, 2])
    truncated: np.ndarray  # bool [n]


def load_tokenizer(path: str | Path, max_length: int) -> Tokenizer:
    """Load ``tokenizer.json`` with its own padding removed and truncation set to ``max_length``.

    A checkpoint's tokenizer.json may pad every text to a fixed length (the default
    model pads to 128), which multiplies model time; we pad per request instead.
    """
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def tokenize_serially() -> None:
    """Make this (served) process tokenize on the calling thread; an explicit
    ``TOKENIZERS_PARALLELISM`` in its environment wins.

    The tokenizers library otherwise spreads a batch over a thread pool of every core,
    the cores the model step needs. Measured on 2 cores (default model): 74 -> 50 µs of
    CPU per text at 4 texts per call, and the ensemble's tokenizer + postprocess share of
    server compute at c16 12-14 % instead of 15-16 %, same throughput
    (``perf/cpu_breakdown.py REPOSITORY ensemble --concurrency 16``, three rounds each way).
    Called from a served model's ``initialize``, never on import: the library's own users
    keep their setting.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def default_buckets(max_length: int) -> tuple[int, ...]:
    """Powers of two from 16 up to ``max_length``, which is always the last bucket."""
    buckets = [b for b in (16, 32, 64, 128, 256, 512, 1024, 2048, 4096) if b < max_length]
    return (*buckets, max_length)


def choose_bucket(length: int, buckets: tuple[int, ...]) -> int:
    for bucket in buckets:
        if length <= bucket:
            return bucket
    return buckets[-1]


def decode_texts(raw: np.ndarray, max_text_bytes: int, name: str = "TEXT") -> list[str]:
    """Turn a BYTES tensor ([n] or [n, 1]) into strings, enforcing UTF-8, no NUL and the byte limit.

    Lone surrogates cannot pass: their UTF-8 form is invalid UTF-8.
    """
    if raw.dtype != object or raw.ndim not in (1, 2) or (raw.ndim == 2 and raw.shape[1] != 1):
        raise TextInputError(f"{name} must be a BYTES tensor of shape [n, 1], got {raw.dtype} {list(raw.shape)}")
    texts = []
    for index, item in enumerate(raw.reshape(-1)):
        data = item if isinstance(item, bytes) else str(item).encode()
        if len(data) > max_text_bytes:
            raise TextInputError(
                f"{name}[{index}] is {len(data)} bytes, over the limit of {max_text_bytes} bytes per text"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TextInputError(
                f"{name}[{index}] is not valid UTF-8 (invalid byte at offset {exc.start})"
            ) from None
        if "\0" in text:
            raise TextInputError(f"{name}[{index}] contains a NUL byte at offset {data.index(0)}; texts may not contain NUL bytes")
        texts.append(text)
    return texts


PAIR_INPUT = "TEXT_PAIR"  # = hf2triton.contract.INPUT_TEXT_PAIR


def alone_when_empty(pairs: list[str]) -> list:
    """Empty second texts as None (the text alone), as transformers' ``tokenizer(text, text_pair="")``."""
    return [pair if pair else None for pair in pairs]


def decode_pairs(raw: np.ndarray, rows: int, max_text_bytes: int) -> list[str]:
    """The ``TEXT_PAIR`` tensor as strings: one per ``TEXT`` row, under the same limits."""
    pairs = decode_texts(raw, max_text_bytes, name=PAIR_INPUT)
    if len(pairs) != rows:
        raise TextInputError(
            f"{PAIR_INPUT} has {len(pairs)} rows but TEXT has {rows}: send one {PAIR_INPUT} per TEXT"
        )
    return pairs


# A long text is tokenized from a prefix of this many characters per max-length token
# (English averages 4-5), grown by GROWTH while it holds too few tokens (whitespace runs).
PREFIX_CHARS_PER_TOKEN, PREFIX_GROWTH = 8, 4


@dataclass(frozen=True)
class BoundedEncodings:
    encodings: list  # tokenizers.Encoding per text, truncated to max length
    chars_tokenized: int  # characters fed to the tokenizer, all rounds together


def settled(encoding) -> bool:
    """Whether a prefix's truncated encoding equals the whole text's.

    Cutting a text changes only its last pre-token (word): normalizers and pre-tokenizers
    act locally, and the model splits each word on its own. So the answer is final once
    the prefix overflows max length and every kept token lies in an earlier word than
    the prefix's last one.
    """
    if not encoding.overflowing:
        return False
    kept = [w for w in encoding.word_ids if w is not None]
    tail = [w for w in encoding.overflowing[-1].word_ids if w is not None]
    return bool(kept) and bool(tail) and max(kept) < tail[-1]


def tokenize_bounded(tokenizer: Tokenizer, texts: list[str], max_length: int) -> BoundedEncodings:
    """Encode texts (truncated to ``max_length``) at a cost bounded by ``max_length`` per text.

    Texts longer than a prefix are encoded from the prefix, which grows until
    :func:`settled` (or until it is the whole text); all texts of a round share one
    Rust batch call.
    """
    encodings: list = [None] * len(texts)
    size = PREFIX_CHARS_PER_TOKEN * max(max_length, 16)
    pending = list(range(len(texts)))
    chars = 0
    while pending:
        pieces = [texts[i][:size] for i in pending]
        chars += sum(len(piece) for piece in pieces)
        still = []
        for i, piece, encoding in zip(pending, pieces, tokenizer.encode_batch(pieces, add_special_tokens=True)):
            if len(piece) == len(texts[i]) or settled(encoding):
                encodings[i] = encoding
            else:
                still.append(i)
        pending, size = still, size * PREFIX_GROWTH
    return BoundedEncodings(encodings, chars)


def tokenize(tokenizer: Tokenizer, texts: list[str], settings: TokenizerSettings) -> list:
    """Encode texts in one batch call per round (truncated to max length, unpadded)."""
    return tokenize_bounded(tokenizer, texts, settings.max_length).encodings


def pad_to_bucket(encodings: list, settings: TokenizerSettings) -> TokenBatch:
    """Pad one request's encodings to the smallest bucket that holds the longest of them
    (``ragged``: to the longest of them)."""
    longest = max((len(e.ids) for e in encodings), default=1)
    width = max(longest, 1) if settings.ragged else choose_bucket(longest, settings.buckets)
    return pad_to_width(encodings, settings, width)


def pad_to_width(encodings: list, settings: TokenizerSettings, width: int) -> TokenBatch:
    """Model inputs for ``encodings`` padded to ``width`` positions."""
    n = len(encodings)
    ids = np.full((n, width), settings.pad_id, dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    type_ids = np.zeros((n, width), dtype=np.int64)
    truncated = np.zeros(n, dtype=bool)
    for row, enc in enumerate(encodings):
        length = len(enc.ids)
        ids[row, :length] = enc.ids
        mask[row, :length] = 1
        type_ids[row, :length] = enc.type_ids
        truncated[row] = bool(enc.overflowing)
    available = {"input_ids": ids, "attention_mask": mask, "token_type_ids": type_ids}
    arrays = {name: available[name] for name in settings.input_names}
    if settings.token_alignment:
        arrays.update(alignment(encodings, width))
    return TokenBatch(arrays, truncated)


OFFSETS, SPECIAL_TOKENS = "offset_mapping", "special_tokens_mask"  # = hf2triton.contract's names


def alignment(encodings: list, width: int) -> dict[str, np.ndarray]:
    """Per-token character spans [n, width, 2] and a no-word mask [n, width] (1 = special or padding).

    The Python ``tokenizers`` binding reports offsets in characters (code points) of the
    ``str`` it was given, so they index the decoded text directly (emoji, CJK, combining marks).
    """
    n = len(encodings)
    offsets = np.zeros((n, width, 2), dtype=np.int64)
    special = np.ones((n, width), dtype=np.int64)
    for row, enc in enumerate(encodings):
        length = len(enc.ids)
        if length:
            offsets[row, :length] = np.asarray(enc.offsets, dtype=np.int64).reshape(length, 2)
            special[row, :length] = enc.special_tokens_mask
    return {OFFSETS: offsets, SPECIAL_TOKENS: special}


def bounded_prefixes(tokenizer: Tokenizer, texts: list[str], max_length: int) -> list[str]:
    """Each text, or a prefix of it whose first ``max_length`` tokens are the whole text's.

    The prefixes grow as in :func:`tokenize_bounded` until :func:`settled`. A pair keeps at
    most ``max_length`` tokens of either side, and ``longest_first`` truncation only looks
    at a side's length once it exceeds that: pairs of settled prefixes encode like the
    whole texts, at a cost bounded by the max length.
    """
    result = list(texts)
    size = PREFIX_CHARS_PER_TOKEN * max(max_length, 16)
    pending = [i for i, text in enumerate(texts) if len(text) > size]
    while pending:
        pieces = [texts[i][:size] for i in pending]
        unsettled = []
        for i, piece, encoding in zip(pending, pieces, tokenizer.encode_batch(pieces, add_special_tokens=True)):
            if settled(encoding):
                result[i] = piece
            else:
                unsettled.append(i)
        size *= PREFIX_GROWTH
        pending = [i for i in unsettled if len(texts[i]) > size]  # the others stay whole
    return result


def tokenize_pairs(tokenizer: Tokenizer, texts: list[str], pairs: list[str], settings: TokenizerSettings) -> list:
    """Encode ``(text, pair)`` rows as ``tokenizer(text, text_pair)`` does: the tokenizer's own pair
    template (BERT ``[SEP]`` + token types, RoBERTa ``</s></s>``...), ``longest_first`` truncation."""
    firsts = bounded_prefixes(tokenizer, texts, settings.max_length)
    seconds = bounded_prefixes(tokenizer, pairs, settings.max_length)
    return tokenizer.encode_batch(list(zip(firsts, seconds)), add_special_tokens=True)


def tokenize_mixed(tokenizer: Tokenizer, texts: list[str], pairs: list, settings: TokenizerSettings) -> list:
    """Encodings of rows that may have a second text (``pairs[i]`` a str) or not (None), in order."""
    single = [i for i, pair in enumerate(pairs) if pair is None]
    paired = [i for i, pair in enumerate(pairs) if pair is not None]
    encodings: list = [None] * len(texts)
    if single:
        for i, encoding in zip(single, tokenize(tokenizer, [texts[i] for i in single], settings)):
            encodings[i] = encoding
    if paired:
        found = tokenize_pairs(tokenizer, [texts[i] for i in paired], [pairs[i] for i in paired], settings)
        for i, encoding in zip(paired, found):
            encodings[i] = encoding
    return encodings


def encode_pair_requests(
    tokenizer: Tokenizer, requests_texts: list[list[str]], requests_pairs: list, settings: TokenizerSettings
) -> list[TokenBatch]:
    """:func:`encode_requests` where a request may carry pairs (a list per request, or None)."""
    if all(pairs is None for pairs in requests_pairs):
        return encode_requests(tokenizer, requests_texts, settings)
    flat = [text for texts in requests_texts for text in texts]
    flat_pairs = [pair for texts, pairs in zip(requests_texts, requests_pairs)
                  for pair in (pairs if pairs is not None else [None] * len(texts))]
    encodings = tokenize_mixed(tokenizer, flat, flat_pairs, settings)
    batches, start = [], 0
    for texts in requests_texts:
        batches.append(pad_to_bucket(encodings[start : start + len(texts)], settings))
        start += len(texts)
    return batches


def encode_requests(
    tokenizer: Tokenizer, requests_texts: list[list[str]], settings: TokenizerSettings
) -> list[TokenBatch]:
    """Tokenize several requests' texts in one batch call, then pad each request separately."""
    flat = [text for texts in requests_texts for text in texts]
    encodings = tokenize(tokenizer, flat, settings)
    batches, start = [], 0
    for texts in requests_texts:
        batches.append(pad_to_bucket(encodings[start : start + len(texts)], settings))
        start += len(texts)
    return batches


# ----------------------------------------------------------------- long texts and prompts
#
# Windowed exports (``--stride`` for token classification, ``--long-text chunk`` for
# embeddings) answer texts longer than the max length in overlapping windows. The
# tokenizer step emits one row per window (not per text) plus, per row, the index of
# its text in the request (``window_text``) and that text on the text's first row
# (``window_source``; empty on the others); the model step runs rows as usual and the
# postprocess step merges each text's rows. ``TRUNCATED`` stays one flag per text: set
# when a text needed more than ``max_windows`` windows (the rest is not read).

WINDOW_TEXT, WINDOW_SOURCE = "window_text", "window_source"  # = hf2triton.contract's names
PARAM_PROMPT_NAME, PARAM_DIMENSIONS = "prompt_name", "dimensions"  # KServe v2 request parameters


@dataclass(frozen=True)
class TextOptions:
    """Long-text windows and sentence-transformers prompts; written by the repository writer."""

    stride: int = 0  # tokens shared by consecutive windows (windowed exports only)
    max_windows: int = 0  # > 0: windowed; at most this many windows per text
    prompts: tuple[tuple[str, str], ...] = ()  # (name, text) as config_sentence_transformers.json names them
    default_prompt_name: str = ""  # the prompt a request gets when it names none ("" = none)
    embedding_size: int = 0  # embeddings: the largest ``dimensions`` a request may ask for

    @property
    def windowed(self) -> bool:
        return self.max_windows > 0

    @classmethod
    def from_json(cls, text: str) -> "TextOptions":
        raw = json.loads(text)
        return cls(int(raw.get("stride", 0)), int(raw.get("max_windows", 0)),
                   tuple((str(k), str(v)) for k, v in raw.get("prompts", {}).items()),
                   str(raw.get("default_prompt_name") or ""), int(raw.get("embedding_size", 0)))

    def to_json(self) -> str:
        return json.dumps({"stride": self.stride, "max_windows": self.max_windows, "prompts": dict(self.prompts),
                           "default_prompt_name": self.default_prompt_name,
                           "embedding_size": self.embedding_size})


def request_parameters(raw: str | dict | None) -> dict:
    """A request's KServe v2 parameters (the python backend gives them as a JSON string)."""
    if not raw:
        return {}
    return json.loads(raw) if isinstance(raw, str) else dict(raw)


def resolve_prompt(parameters: dict, options: TextOptions) -> str:
    """The prompt text to put before each text, as ``SentenceTransformer.encode(prompt_name=...)`` does.

    No ``prompt_name``: the checkpoint's default prompt (or none). Also checks ``dimensions``
    here, before any model time is spent on a request that cannot be answered.
    """
    prompts = dict(options.prompts)
    if PARAM_DIMENSIONS in parameters:
        check_dimensions(parameters[PARAM_DIMENSIONS], options.embedding_size)
    name = parameters.get(PARAM_PROMPT_NAME)
    if name is None:
        return prompts.get(options.default_prompt_name, "")
    if not isinstance(name, str) or name not in prompts:
        known = ", ".join(sorted(prompts)) or "none (the checkpoint names no prompts)"
        raise TextInputError(f"unknown prompt_name {name!r}; this model's prompts: {known}")
    return prompts[name]


def check_dimensions(value, embedding_size: int) -> int:
    """``dimensions`` must be an integer in 1..the embedding size (embeddings only)."""
    if not embedding_size:
        raise TextInputError("the dimensions parameter applies to embedding models only")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= embedding_size:
        raise TextInputError(f"dimensions must be an integer in 1..{embedding_size} (the embedding size), "
                             f"got {value!r}")
    return value


def load_window_tokenizer(path: str | Path, max_length: int, stride: int) -> Tokenizer:
    """Like :func:`load_tokenizer`, with overflowing windows that share ``stride`` tokens, as transformers'
    ``tokenizer(text, truncation=True, return_overflowing_tokens=True, stride=stride)`` makes them."""
    tokenizer = load_tokenizer(path, max_length)
    tokenizer.enable_truncation(max_length=max_length, stride=stride)
    return tokenizer


@dataclass(frozen=True)
class Windows:
    batch: TokenBatch  # one row per window, padded like a request of that many texts
    owner: np.ndarray  # int64 [rows]: the index of each row's text in the request
    source: np.ndarray  # object [rows]: the text (UTF-8) on its first row, b"" on the others
    truncated: np.ndarray  # bool [texts]: more than max_windows windows were needed


def text_windows(encoding, max_windows: int) -> tuple[list, bool]:
    """A text's windows in order (the first encoding, then its overflow), at most ``max_windows``."""
    windows = [encoding, *encoding.overflowing]
    return windows[:max_windows], len(windows) > max_windows


def encode_windows(tokenizer: Tokenizer, texts: list[str], settings: TokenizerSettings, max_windows: int) -> Windows:
    """Every text's windows in one Rust batch call, bounded by ``max_windows`` x max length per text.

    A text is tokenized from a prefix of at most ``PREFIX_CHARS_PER_TOKEN`` characters per
    token of ``max_windows`` windows; a text longer than that prefix is reported truncated.
    """
    limit = PREFIX_CHARS_PER_TOKEN * max(settings.max_length, 16) * max_windows
    pieces = [text[:limit] for text in texts]
    rows, owner, source, truncated = [], [], [], np.zeros(len(texts), dtype=bool)
    for index, (text, piece, encoding) in enumerate(
        zip(texts, pieces, tokenizer.encode_batch(pieces, add_special_tokens=True))
    ):
        windows, cut = text_windows(encoding, max_windows)
        truncated[index] = cut or len(piece) < len(text)
        rows += windows
        owner += [index] * len(windows)
        source += [text.encode()] + [b""] * (len(windows) - 1)
    batch = pad_to_bucket(rows, settings)
    return Windows(batch, np.array(owner, dtype=np.int64), np.array(source, dtype=object), truncated)


class TritonPythonModel:
    """The tokenizer step as a Triton python-backend model."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        version_dir = Path(args["model_repository"]) / args["model_version"]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.settings = TokenizerSettings.from_json(params["settings"])
        tokenize_serially()
        self.tokenizer = load_tokenizer(version_dir / "tokenizer.json", self.settings.max_length)
        self.text_input = config["input"][0]["name"]
        self.truncated_output = params["truncated_output"]
        # Sequence classifiers and rerankers declare the optional TEXT_PAIR input.
        self.pair_input = next((t["name"] for t in config["input"] if t["name"] == PAIR_INPUT), None)
        self.empty_pair_alone = params.get("empty_pair_alone", "false") == "true"
        self.text_options = TextOptions.from_json(params.get("text_options", "{}"))
        self.emit_sources = any(tensor["name"] == WINDOW_SOURCE for tensor in config["output"])
        if self.text_options.windowed:
            self.window_tokenizer = load_window_tokenizer(
                version_dir / "tokenizer.json", self.settings.max_length, self.text_options.stride
            )

    def execute(self, requests):
        responses: list = [None] * len(requests)
        texts_per_request, pairs_per_request, valid = [], [], []
        for i, request in enumerate(requests):
            raw = pb_utils.get_input_tensor_by_name(request, self.text_input).as_numpy()
            try:
                texts = decode_texts(raw, self.settings.max_text_bytes)
                prompt = resolve_prompt(request_parameters(request.parameters()), self.text_options)
                pairs = request_pairs(request, self.pair_input, len(texts), self.settings, self.empty_pair_alone)
                texts_per_request.append([prompt + text for text in texts] if prompt else texts)
                pairs_per_request.append(pairs)
                valid.append(i)
            except TextInputError as exc:
                responses[i] = _error_response(str(exc))
        if self.text_options.windowed:  # windowed tasks take no TEXT_PAIR (their configs declare none)
            for i, texts in zip(valid, texts_per_request):
                responses[i] = self._windows_response(texts)
            return responses
        for i, batch in zip(valid, self._encode(texts_per_request, pairs_per_request)):
            if isinstance(batch, Exception):
                responses[i] = _error_response(f"tokenizer step failed on this request: {batch}", internal=True)
                continue
            tensors = [pb_utils.Tensor(name, array) for name, array in batch.arrays.items()]
            tensors.append(pb_utils.Tensor(self.truncated_output, batch.truncated.reshape(-1, 1)))
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def _windows_response(self, texts: list[str]):
        """One request's windows (rows), each row's text index, its text on the first row, TRUNCATED per text."""
        try:
            windows = encode_windows(self.window_tokenizer, texts, self.settings, self.text_options.max_windows)
        except Exception as exc:  # noqa: BLE001 - this request's alone
            logger.exception("windowed tokenization failed on one request")
            return _error_response(f"tokenizer step failed on this request: {exc}", internal=True)
        tensors = [pb_utils.Tensor(name, array) for name, array in windows.batch.arrays.items()]
        tensors.append(pb_utils.Tensor(WINDOW_TEXT, windows.owner.reshape(-1, 1)))
        if self.emit_sources:
            tensors.append(pb_utils.Tensor(WINDOW_SOURCE, windows.source.reshape(-1, 1)))
        tensors.append(pb_utils.Tensor(self.truncated_output, windows.truncated.reshape(-1, 1)))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _encode(self, texts_per_request: list[list[str]], pairs_per_request: list) -> list:
        """All requests in one call; if that raises, each on its own so only the culprit fails."""
        try:
            return encode_pair_requests(self.tokenizer, texts_per_request, pairs_per_request, self.settings)
        except Exception:  # noqa: BLE001 - isolate whichever request raised, whatever it raised
            logger.exception("batched tokenization failed; retrying request by request")
        batches: list = []
        for texts, pairs in zip(texts_per_request, pairs_per_request):
            try:
                batches.extend(encode_pair_requests(self.tokenizer, [texts], [pairs], self.settings))
            except Exception as exc:  # noqa: BLE001
                batches.append(exc)
        return batches


def request_pairs(request, pair_input: str | None, rows: int, settings: TokenizerSettings,
                  empty_alone: bool = False) -> list | None:
    """A request's ``TEXT_PAIR`` strings, or None when it sent none (or the model takes none:
    Triton itself refuses an input the model's config does not declare). With ``empty_alone``
    an empty string is None: that row's text is encoded alone."""
    tensor = pb_utils.get_input_tensor_by_name(request, pair_input) if pair_input else None
    if tensor is None:
        return None
    pairs = decode_pairs(tensor.as_numpy(), rows, settings.max_text_bytes)
    return alone_when_empty(pairs) if empty_alone else pairs


def _error_response(message: str, internal: bool = False):
    code = pb_utils.TritonError.INTERNAL if internal else pb_utils.TritonError.INVALID_ARG
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
