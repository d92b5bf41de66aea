"""Reading checkpoint directories: task, inputs, limits, pooling, and clear errors."""

import json
import shutil

import pytest

from hf2triton.export.checkpoint import inspect_checkpoint
from hf2triton.errors import CheckpointError


def test_default_model_is_sentence_embeddings_with_mean_pooling_and_normalize(default_model_dir):
    checkpoint = inspect_checkpoint(default_model_dir)
    assert checkpoint.task.name == "embeddings"
    assert checkpoint.input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert checkpoint.max_sequence_length == 256  # sentence_bert_config.json, not the 512 positions
    assert (checkpoint.pooling.mode, checkpoint.pooling.normalize) == ("mean", True)
    assert checkpoint.hidden_size == 384


def test_classifier_labels_come_from_id2label(minilm_classifier_dir):
    checkpoint = inspect_checkpoint(minilm_classifier_dir)
    assert checkpoint.task.name == "sequence-classification"
    assert checkpoint.labels == ("negative", "neutral", "positive")
    assert not checkpoint.multi_label


def test_roberta_takes_no_token_type_ids_and_multi_label_is_detected(tiny_roberta_multilabel_dir):
    checkpoint = inspect_checkpoint(tiny_roberta_multilabel_dir)
    assert checkpoint.input_names == ("input_ids", "attention_mask")
    assert checkpoint.multi_label
    assert checkpoint.max_sequence_length == 128  # 130 positions - padding index 1 - 1


@pytest.mark.parametrize(
    "model_type, inputs",
    [
        ("bert", ("input_ids", "attention_mask", "token_type_ids")),
        ("distilbert", ("input_ids", "attention_mask")),
        ("electra", ("input_ids", "attention_mask", "token_type_ids")),
        ("mpnet", ("input_ids", "attention_mask")),
        ("xlm-roberta", ("input_ids", "attention_mask")),
    ],
)
def test_inputs_per_architecture(tiny_checkpoint, model_type, inputs):
    assert inspect_checkpoint(tiny_checkpoint(model_type)).input_names == inputs


def test_task_override_and_max_length(minilm_classifier_dir):
    checkpoint = inspect_checkpoint(minilm_classifier_dir, task="embeddings", max_length=64)
    assert checkpoint.task.name == "embeddings"
    assert checkpoint.max_sequence_length == 64


def copy_checkpoint(source, destination, drop=()):
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns(*drop))
    return destination


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: (d / "config.json").unlink(), "has no config.json"),
        (lambda d: (d / "model.safetensors").unlink(), "has no weights"),
        (lambda d: [(d / f).unlink() for f in ("tokenizer.json", "vocab.txt")], "has no tokenizer"),
        (lambda d: (d / "config.json").write_text("{not json"), "cannot read"),
    ],
)
def test_incomplete_checkpoints_are_named(minilm_classifier_dir, tmp_path, mutate, message):
    broken = copy_checkpoint(minilm_classifier_dir, tmp_path / "broken")
    mutate(broken)
    with pytest.raises(CheckpointError, match=message):
        inspect_checkpoint(broken)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        inspect_checkpoint(tmp_path / "nope")


def test_unsupported_architecture_lists_supported_ones(minilm_classifier_dir, tmp_path):
    broken = copy_checkpoint(minilm_classifier_dir, tmp_path / "gpt")
    config = json.loads((broken / "config.json").read_text())
    config.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="'gpt2'.*not supported.*bert, distilbert"):
        inspect_checkpoint(broken)


def test_token_classification_is_detected_with_its_entity_labels(tiny_checkpoint):
    checkpoint = inspect_checkpoint(tiny_checkpoint("bert", "token-classification"))
    assert checkpoint.task.name == "token-classification"
    assert checkpoint.task.token_alignment
    assert checkpoint.labels[:3] == ("O", "B-PER", "I-PER")


def test_token_classifier_without_id2label_is_refused(tiny_checkpoint, tmp_path):
    ner = copy_checkpoint(tiny_checkpoint("bert", "token-classification"), tmp_path / "ner")
    config = json.loads((ner / "config.json").read_text())
    del config["id2label"], config["label2id"]
    (ner / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="no id2label; a token classifier needs its entity label names"):
        inspect_checkpoint(ner)


def test_unknown_architecture_asks_for_task(minilm_classifier_dir, tmp_path):
    odd = copy_checkpoint(minilm_classifier_dir, tmp_path / "odd")
    config = json.loads((odd / "config.json").read_text())
    config["architectures"] = ["BertForQuestionAnswering"]
    (odd / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="pass --task"):
        inspect_checkpoint(odd)
    assert inspect_checkpoint(odd, task="embeddings").task.name == "embeddings"


def test_max_length_beyond_the_model_is_refused(minilm_classifier_dir):
    with pytest.raises(CheckpointError, match="outside 1..512"):
        inspect_checkpoint(minilm_classifier_dir, max_length=1024)


def test_pooling_from_sentence_transformers_config(default_model_dir, tmp_path):
    st = copy_checkpoint(default_model_dir, tmp_path / "cls-pooled")
    (st / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 384, "pooling_mode_cls_token": True})
    )
    modules = [m for m in json.loads((st / "modules.json").read_text()) if not m["type"].endswith("Normalize")]
    (st / "modules.json").write_text(json.dumps(modules))
    pooling = inspect_checkpoint(st).pooling
    assert (pooling.mode, pooling.normalize) == ("cls", False)


def test_checkpoint_without_sentence_transformers_config_gets_mean_and_l2(tiny_checkpoint):
    pooling = inspect_checkpoint(tiny_checkpoint("bert", "embeddings")).pooling
    assert (pooling.mode, pooling.normalize, pooling.source) == ("mean", True, "default")
