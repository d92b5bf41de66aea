"""PEFT/LoRA adapter checkpoints: merged into their base model before export.

A folder holding ``adapter_config.json`` (and adapter weights) names its base model in
``base_model_name_or_path``; that base must be a local folder (absolute, or relative to
the adapter folder). The merged model is written to a work folder with the tokenizer
files of the adapter folder (else of the base) and exported like any checkpoint; the
adapter folder itself is never written to.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from hf2triton.export.checkpoint import read_json
from hf2triton.errors import CheckpointError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "sentencepiece.bpe.model", "spiece.model")
# PEFT task types → the transformers Auto class that loads the base.
AUTO_CLASS = {"SEQ_CLS": "AutoModelForSequenceClassification", "TOKEN_CLS": "AutoModelForTokenClassification",
              "FEATURE_EXTRACTION": "AutoModel"}


def is_adapter(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).exists()


def base_model_path(adapter: Path) -> Path:
    config = read_json(adapter / ADAPTER_CONFIG)
    named = config.get("base_model_name_or_path")
    if not named:
        raise CheckpointError(f"{adapter / ADAPTER_CONFIG} names no base_model_name_or_path")
    for candidate in (Path(named).expanduser(), adapter / named):
        if (candidate / "config.json").exists():
            return candidate.resolve()
    raise CheckpointError(
        f"the base model {named!r} of the adapter in {adapter} is not a local checkpoint folder; "
        "hf2triton never downloads: set base_model_name_or_path in adapter_config.json to its local path"
    )


def merge_adapter(adapter: Path, destination: Path) -> Path:
    """Load base + adapter, merge the LoRA weights, save a plain checkpoint to ``destination``."""
    import transformers
    from peft import PeftModel

    adapter = Path(adapter).resolve()
    base = base_model_path(adapter)
    task_type = read_json(adapter / ADAPTER_CONFIG).get("task_type") or "FEATURE_EXTRACTION"
    if task_type not in AUTO_CLASS:
        raise CheckpointError(f"{adapter}: PEFT task_type {task_type!r} is not supported; "
                              f"supported: {', '.join(AUTO_CLASS)}")
    auto_class = getattr(transformers, AUTO_CLASS[task_type])
    model = auto_class.from_pretrained(base)
    try:
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    except (ValueError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"cannot merge the adapter in {adapter} into {base}: {exc}") from exc
    merged.save_pretrained(destination)
    for name in TOKENIZER_FILES:
        source = adapter / name if (adapter / name).exists() else base / name
        if source.exists():
            shutil.copyfile(source, destination / name)
    (destination / "hf2triton_adapter.json").write_text(json.dumps({"adapter": str(adapter), "base": str(base)}))
    log.info("merged the %s adapter %s into %s", task_type, adapter, base)
    return destination
