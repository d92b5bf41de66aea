"""Names shared by the repository writer, the served steps and the client.

The served ensemble ``NAME`` takes ``TEXT`` (BYTES, one UTF-8 text per batch row),
for sequence classifiers and rerankers optionally ``TEXT_PAIR`` (the second text of
each row: a text pair, or the document a query is scored against), and returns task outputs plus ``TRUNCATED`` (BOOL, whether the text was cut to the
model's max length). Settings a client needs (task, labels, limits) are published
as parameters of the ensemble's model config, so any Triton client can read them.
"""

from __future__ import annotations

DEFAULT_MODEL_NAME = "all_minilm_l6_v2"  # the ensemble name of the embedded default model

INPUT_TEXT = "TEXT"
INPUT_TEXT_PAIR = "TEXT_PAIR"  # optional, same shape as TEXT: tokenized as tokenizer(text, text_pair)
OUTPUT_TRUNCATED = "TRUNCATED"
OUTPUT_EMBEDDING = "EMBEDDING"
OUTPUT_LABEL = "LABEL"
OUTPUT_SCORES = "SCORES"
OUTPUT_ENTITIES = "ENTITIES"  # BYTES [1] per text: a JSON list of entities
# INT64 [1] per text: the tokens the model read (special tokens in, after truncation). The
# fused model answers it (the ensemble's tokenizer step can be asked instead): usage counts.
OUTPUT_TOKENS = "TOKENS"

# Tensors between the tokenizer and postprocess steps of token classification.
TENSOR_OFFSETS = "offset_mapping"  # INT64 [seq, 2]: character (code point) start, end per token
TENSOR_SPECIAL_TOKENS = "special_tokens_mask"  # INT64 [seq]: 1 for special and padding tokens

# Windowed exports (--stride, --long-text chunk): the tokenizer sends one row per window, and per row
TENSOR_WINDOW_TEXT = "window_text"  # INT64 [1]: the index of the row's text in the request
TENSOR_WINDOW_SOURCE = "window_source"  # BYTES [1]: the text on its first window's row, empty on the others

# Request-level options: KServe v2 request parameters of an embeddings request ("parameters" in the JSON body).
REQUEST_PROMPT_NAME = "prompt_name"  # string: one of the checkpoint's sentence-transformers prompts
REQUEST_DIMENSIONS = "dimensions"  # int: keep the first N components (Matryoshka), re-normalised

# Ensemble model-config parameters (string values; JSON where structured).
PARAM_TASK = "hf2triton.task"
PARAM_LABELS = "hf2triton.labels"  # JSON list of label names, index = class id
PARAM_MULTI_LABEL = "hf2triton.multi_label"  # "true" / "false"
PARAM_AGGREGATION = "hf2triton.aggregation"  # token classification: none/simple/first/average/max
PARAM_MAX_TEXT_BYTES = "hf2triton.max_text_bytes"
PARAM_MAX_SEQUENCE_LENGTH = "hf2triton.max_sequence_length"
PARAM_VERSION = "hf2triton.version"
PARAM_TEXT_PAIR = "hf2triton.text_pair"  # "true" when the model takes TEXT_PAIR
PARAM_ACTIVATION = "hf2triton.activation"  # rerank: what turns the logit into SCORES (sigmoid/identity/tanh)
PARAM_PROMPTS = "hf2triton.prompts"  # JSON object: prompt name -> prompt text
PARAM_DEFAULT_PROMPT = "hf2triton.default_prompt_name"  # "" = none
PARAM_STRIDE = "hf2triton.stride"  # tokens shared by consecutive windows ("0" when not windowed)
PARAM_MAX_WINDOWS = "hf2triton.max_windows"  # "0": long texts are truncated (and reported)


def step_names(name: str) -> tuple[str, str, str]:
    """Model names of the tokenizer, model and postprocess steps of ensemble ``name``."""
    return f"{name}_tokenizer", f"{name}_model", f"{name}_postprocess"


# Where a local deployment lives and listens: `hf2triton serve` binds these by default and
# the clients, `verify` and `perf` connect to them by default.
DEFAULT_REPOSITORY = "model_repository"
PROTOCOLS = ("grpc", "http")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}


def local_url(protocol: str) -> str:
    """``host:port`` of the local server's ``protocol`` endpoint (grpc or http)."""
    return f"{DEFAULT_HOST}:{DEFAULT_PORTS[protocol]}"
