"""The checkpoint's fast tokenizer, as the served tokenizer step will load it."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from hf2triton.backends.postprocess import AGGREGATIONS, EntitySettings
from hf2triton.backends.tokenizer import TextOptions, TokenizerSettings, default_buckets, load_tokenizer
from hf2triton.export.checkpoint import Checkpoint, read_json
from hf2triton.errors import CheckpointError, OptionsError


def write_tokenizer_json(checkpoint: Checkpoint, destination: Path) -> Path:
    """Copy the checkpoint's tokenizer.json, or convert its slow tokenizer files into one."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    if checkpoint.tokenizer_file is not None:
        destination.write_bytes(checkpoint.tokenizer_file.read_bytes())
        return destination
    from transformers import AutoTokenizer

    try:
        fast = AutoTokenizer.from_pretrained(checkpoint.path, use_fast=True)
    except Exception as exc:  # conversion raises many types (missing sentencepiece, bad vocab)
        raise CheckpointError(f"{checkpoint.path}: cannot build a fast tokenizer: {exc}") from exc
    if not fast.is_fast:
        raise CheckpointError(f"{checkpoint.path}: only a slow tokenizer is available; a fast one is needed")
    fast.backend_tokenizer.save(str(destination))
    return destination


def pad_id(tokenizer_json: Path, checkpoint: Checkpoint) -> int:
    """The padding token id: from tokenizer.json's padding, else its [PAD]/<pad> token."""
    raw = Tokenizer.from_file(str(tokenizer_json))
    if raw.padding:
        return int(raw.padding["pad_id"])
    for token in ("[PAD]", "<pad>", "<PAD>", "[pad]"):
        token_id = raw.token_to_id(token)
        if token_id is not None:
            return token_id
    raise CheckpointError(f"{checkpoint.path}: the tokenizer has no padding token")


def embedding_sizes(checkpoint: Checkpoint) -> tuple[int, int]:
    """The model's vocabulary and token-type counts from config.json (0 when it does not say)."""
    raw = read_json(checkpoint.path / "config.json")
    return int(raw.get("vocab_size") or 0), int(raw.get("type_vocab_size") or 0)


def check_vocabulary(tokenizer_json: Path, checkpoint: Checkpoint, vocab_size: int) -> None:
    """Refuse a tokenizer that can produce ids the model has no embedding for.

    Such a token (typically an added token whose embedding was never resized) would
    fail every served batch that contains it.
    """
    if not vocab_size:
        return
    vocabulary = Tokenizer.from_file(str(tokenizer_json)).get_vocab(with_added_tokens=True)
    outside = sorted((token_id, token) for token, token_id in vocabulary.items() if token_id >= vocab_size)
    if outside:
        named = ", ".join(f"{token!r} ({token_id})" for token_id, token in outside[:10])
        more = f" and {len(outside) - 10} more" if len(outside) > 10 else ""
        raise CheckpointError(
            f"{checkpoint.path}: the tokenizer has {len(outside)} token(s) with ids past the model's vocabulary "
            f"of {vocab_size} (config.json vocab_size): {named}{more}; resize the model's embeddings "
            "(model.resize_token_embeddings) or remove those tokens"
        )


def tokenizer_settings(
    tokenizer_json: Path, checkpoint: Checkpoint, max_text_bytes: int, buckets: tuple[int, ...] | None = None
) -> TokenizerSettings:
    """The served tokenizer's settings; refuses a tokenizer whose ids exceed the model's vocabulary."""
    vocab_size, type_vocab_size = embedding_sizes(checkpoint)
    check_vocabulary(tokenizer_json, checkpoint, vocab_size)
    length = checkpoint.max_sequence_length
    chosen = buckets or default_buckets(length)
    if chosen[-1] != length or any(b > length for b in chosen):
        chosen = tuple(sorted({b for b in chosen if b < length} | {length}))
    return TokenizerSettings(
        max_length=length,
        buckets=chosen,
        pad_id=pad_id(tokenizer_json, checkpoint),
        max_text_bytes=max_text_bytes,
        input_names=checkpoint.input_names,
        token_alignment=checkpoint.task.token_alignment,
        vocab_size=vocab_size,
        type_vocab_size=type_vocab_size,
    )


def unknown_token_id(tokenizer_json: Path, checkpoint: Checkpoint) -> int | None:
    """The id transformers' tokenizer reports as ``unk_token_id`` (None when it has none)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(checkpoint.path).unk_token_id
    except Exception:  # no transformers tokenizer config: read the tokenizers model's own
        raw = Tokenizer.from_file(str(tokenizer_json))
        token = getattr(raw.model, "unk_token", None)
        return raw.token_to_id(token) if token else None


def entity_settings(tokenizer_json: Path, checkpoint: Checkpoint, aggregation: str) -> EntitySettings | None:
    """How the postprocess step turns token labels into entities; None for other tasks."""
    if not checkpoint.task.token_alignment:
        return None
    if aggregation not in AGGREGATIONS:
        raise CheckpointError(f"--aggregation {aggregation!r}: choose one of {', '.join(AGGREGATIONS)}")
    raw = Tokenizer.from_file(str(tokenizer_json))
    return EntitySettings(
        labels=checkpoint.labels,
        aggregation=aggregation,
        # The pipeline's test for a word-aware vocabulary (WordPiece's "##"); others use a heuristic.
        word_aware=bool(getattr(raw.model, "continuing_subword_prefix", None)),
        unk_id=unknown_token_id(tokenizer_json, checkpoint),
    )


def served_tokenizer(tokenizer_json: Path, settings: TokenizerSettings) -> Tokenizer:
    return load_tokenizer(tokenizer_json, settings.max_length)


LONG_TEXT_MODES = ("truncate", "chunk")  # embeddings: cut at the max length (reported), or windows pooled
DEFAULT_MAX_WINDOWS = 16
DEFAULT_CHUNK_STRIDE = 32  # tokens shared by consecutive windows of --long-text chunk (at most a quarter)


def special_token_count(tokenizer_json: Path) -> int:
    """Tokens the tokenizer adds around one text ([CLS] ... [SEP]: 2)."""
    processor = Tokenizer.from_file(str(tokenizer_json)).post_processor
    return processor.num_special_tokens_to_add(False) if processor is not None else 0


def text_options(
    tokenizer_json: Path, checkpoint: Checkpoint, *, stride: int | None = None, long_text: str = "truncate",
    max_windows: int = DEFAULT_MAX_WINDOWS, aggregation: str = "simple",
) -> TextOptions:
    """Windows (token classification with ``stride``; embeddings with ``long_text="chunk"``) and prompts.

    Sequence classification always truncates (and reports it): one label per text has no
    agreed merge of windows.
    """
    task = checkpoint.task
    if long_text not in LONG_TEXT_MODES:
        raise OptionsError(f"--long-text {long_text!r}: choose one of {', '.join(LONG_TEXT_MODES)}")
    if long_text == "chunk" and not task.pooled:
        raise OptionsError(f"--long-text chunk applies to embeddings; {task.name} "
                           + ("uses --stride for long texts" if task.token_alignment else "truncates long texts"))
    if stride is not None and not (task.token_alignment or long_text == "chunk"):
        raise OptionsError(f"--stride applies to token classification and to embeddings with --long-text chunk; "
                           f"{task.name} truncates long texts (reported in TRUNCATED)")
    windowed = (task.token_alignment and stride is not None) or long_text == "chunk"
    content = checkpoint.max_sequence_length - special_token_count(tokenizer_json)
    if windowed:
        if task.token_alignment and aggregation == "none":
            raise OptionsError("--stride merges entities across windows: choose an --aggregation other than none "
                               "(as transformers' pipeline requires)")
        if stride is None:
            stride = min(DEFAULT_CHUNK_STRIDE, content // 4)
        if not 0 <= stride < content:
            raise OptionsError(f"--stride {stride} must be in 0..{content - 1}: fewer than the {content} text "
                               f"tokens a window of --max-length {checkpoint.max_sequence_length} holds")
        if not 1 <= max_windows <= 1024:
            raise OptionsError(f"--max-windows must be in 1..1024, got {max_windows}")
    return TextOptions(
        stride=stride if windowed and stride else 0,
        max_windows=max_windows if windowed else 0,
        prompts=checkpoint.prompts,
        default_prompt_name=checkpoint.default_prompt_name,
        embedding_size=checkpoint.hidden_size if task.pooled else 0,
    )
