"""Checkpoints the tests build themselves (no hub downloads): real ``save_pretrained`` folders.

- the MiniLM backbone of the default model with a fresh classification head;
- tiny randomly initialised encoders of each supported family, with a real fast
  tokenizer (the default model's WordPiece, or a byte-level BPE trained here for
  RoBERTa-style models, whose padding id is 1 and which take no token_type_ids).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import transformers
from tokenizers import ByteLevelBPETokenizer

from hf2triton.export.checkpoint import default_checkpoint

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
SENTIMENT_LABELS = {0: "negative", 1: "neutral", 2: "positive"}
TOPIC_LABELS = {0: "sports", 1: "politics", 2: "tech", 3: "health"}
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC", 5: "B-ORG", 6: "I-ORG"}
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
# A tiny config for every supported model type; tests/test_matrix.py fails for a type
# listed in hf2triton.export.checkpoint.SUPPORTED_MODEL_TYPES that has none here.
TINY_CONFIGS = {
    "bert": TINY,
    "distilbert": dict(dim=32, n_layers=2, n_heads=4, hidden_dim=64),
    "roberta": TINY,
    "xlm-roberta": TINY,
    "electra": TINY,
    "mpnet": TINY,
    "deberta-v2": TINY,
}
BYTE_LEVEL_BPE_TYPES = ("roberta", "xlm-roberta")  # padding id 1, no token_type_ids, like the real ones
BPE_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Serving transformer models with Triton is fast when requests are batched.",
    "Le café était très bon, merci beaucoup! 日本語のテキスト 😀",
] * 20


def copy_wordpiece_tokenizer(destination: Path) -> None:
    source = default_checkpoint()
    for name in TOKENIZER_FILES:
        shutil.copyfile(source / name, destination / name)


def minilm_classifier(destination: Path, labels: dict[int, str] = SENTIMENT_LABELS, multi_label: bool = False) -> Path:
    """The default model's backbone with a fresh, seeded classification head."""
    torch.manual_seed(0)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        default_checkpoint(),
        num_labels=len(labels),
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
        problem_type="multi_label_classification" if multi_label else "single_label_classification",
    )
    # A random head gives near-uniform probabilities; scale it so labels differ clearly.
    with torch.no_grad():
        model.classifier.weight.mul_(20.0)
    model.save_pretrained(destination)
    copy_wordpiece_tokenizer(destination)
    return destination


def byte_level_bpe_tokenizer(destination: Path, max_length: int = 128) -> int:
    """Train a small RoBERTa-style tokenizer and save it as a transformers fast tokenizer."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(BPE_CORPUS, vocab_size=600, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    fast = transformers.RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, model_max_length=max_length)
    fast.save_pretrained(destination)
    return fast.vocab_size


CALIBRATION_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "I loved this film, the acting was superb!",
    "Terrible service. Never again.",
    "Angela Merkel met Emmanuel Macron in Paris.",
    "这家餐厅的菜非常好吃",
    "Great job 🎉🔥 totally worth it",
    "ok",
    "Numbers 3.14159, dates 2026-11-23, and URLs https://example.com",
)


# Logit spread per task. A random tiny model's [CLS] vectors differ little between texts, so a
# head that separates them amplifies float rounding (ONNX vs PyTorch) by ~1000×: keep sentence
# logits close (labels still differ, parity stays within 1e-4); token vectors differ more.
HEAD_SPREAD = {"sequence-classification": 0.3, "token-classification": 3.0, "rerank": 1.0}
RERANK_LABELS = {0: "LABEL_0"}  # a cross-encoder: one output label (sentence-transformers CrossEncoder)


def calibrate_head(model: torch.nn.Module, tokenizer_dir: Path, num_labels: int, spread: float) -> None:
    """Make a random classification head tell inputs apart.

    A random head's logits are a large offset shared by every input plus a tiny part that
    varies, so every text (or token) gets the same label. Point each label's row of the
    output layer along one principal direction in which its inputs vary over a few texts,
    centred and scaled to a logit spread of ``spread``: labels differ between inputs, and
    the head amplifies rounding noise as little as it can.
    """
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == num_labels][-1]
    seen: list[torch.Tensor] = []
    hook = head.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].detach()))
    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    with torch.no_grad():
        model.eval()(**tokenizer(list(CALIBRATION_TEXTS), padding=True, return_tensors="pt"))
    hook.remove()
    features = torch.cat([x.reshape(-1, x.shape[-1]) for x in seen]).double()
    mean = features.mean(dim=0)
    _, singular, directions = torch.linalg.svd(features - mean, full_matrices=False)
    spreads = singular[:num_labels] / len(features) ** 0.5
    weight = directions[:num_labels] * (spread / spreads.clamp(min=1e-6))[:, None]
    with torch.no_grad():
        head.weight.copy_(weight.float())
        head.bias.copy_(-(weight @ mean).float())


def tiny_encoder(destination: Path, model_type: str, task: str = "sequence-classification",
                 labels: dict[int, str] = SENTIMENT_LABELS, multi_label: bool = False, seed: int = 0,
                 activation: str | None = None) -> Path:
    """A randomly initialised 2-layer encoder of ``model_type`` with a real tokenizer.

    ``task="rerank"``: a one-label sequence classifier (a cross-encoder); ``activation`` (a
    torch class path) is written where sentence-transformers' ``CrossEncoder`` reads it.
    """
    destination.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    extra: dict = {}
    if model_type in BYTE_LEVEL_BPE_TYPES:
        vocab = byte_level_bpe_tokenizer(destination)
        extra = dict(vocab_size=vocab + 8, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                     type_vocab_size=1, max_position_embeddings=130)
    else:
        copy_wordpiece_tokenizer(destination)
        extra = dict(vocab_size=30522, pad_token_id=0)
    config = transformers.AutoConfig.for_model(model_type, **TINY_CONFIGS[model_type], **extra)
    if task == "token-classification" and labels is SENTIMENT_LABELS:
        labels = NER_LABELS
    if task == "rerank":
        labels = RERANK_LABELS
    if task in ("sequence-classification", "token-classification", "rerank"):
        config.num_labels = len(labels)
        config.id2label = dict(labels)
        config.label2id = {v: k for k, v in labels.items()}
        if multi_label:
            config.problem_type = "multi_label_classification"
    auto_class = {
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "rerank": transformers.AutoModelForSequenceClassification,
        "token-classification": transformers.AutoModelForTokenClassification,
    }.get(task, transformers.AutoModel)
    model = auto_class.from_config(config)
    if task != "embeddings":
        calibrate_head(model, destination, len(labels), HEAD_SPREAD[task])
    model.save_pretrained(destination)
    if activation is not None:  # as sentence-transformers' CrossEncoder.save records its activation
        raw = json.loads((destination / "config.json").read_text())
        raw["sentence_transformers"] = {"activation_fn": activation}
        (destination / "config.json").write_text(json.dumps(raw, indent=2))
    return destination


def lora_adapter(destination: Path, base: Path) -> Path:
    """A LoRA adapter (query/value, r=4) over ``base`` with non-zero weights, saved by PEFT."""
    from peft import LoraConfig, TaskType, get_peft_model

    torch.manual_seed(1)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                                                  target_modules=["query", "value"]))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapter a visible effect
                parameter.normal_(0, 0.5)
    peft_model.save_pretrained(destination)
    config = destination / "adapter_config.json"
    raw = json.loads(config.read_text())
    raw["base_model_name_or_path"] = str(base)
    config.write_text(json.dumps(raw))
    return destination
