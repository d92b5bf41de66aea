"""Shared fixtures: checkpoints built once per session, one exported repository, one server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import checkpoints  # noqa: E402  (tests/checkpoints.py)


@pytest.fixture(scope="session")
def checkpoint_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    from hf2triton.export.checkpoint import default_checkpoint

    return default_checkpoint()


@pytest.fixture(scope="session")
def minilm_classifier_dir(checkpoint_root) -> Path:
    return checkpoints.minilm_classifier(checkpoint_root / "sentiment")


@pytest.fixture(scope="session")
def tiny_roberta_multilabel_dir(checkpoint_root) -> Path:
    return checkpoints.tiny_encoder(
        checkpoint_root / "topics", "roberta", labels=checkpoints.TOPIC_LABELS, multi_label=True
    )


@pytest.fixture(scope="session")
def tiny_checkpoint(checkpoint_root):
    """Factory: a tiny encoder of a model type and task, built once per session."""
    built: dict[tuple[str, str], Path] = {}

    def make(model_type: str, task: str = "sequence-classification") -> Path:
        key = (model_type, task)
        if key not in built:
            built[key] = checkpoints.tiny_encoder(checkpoint_root / f"{model_type}-{task}", model_type, task)
        return built[key]

    return make


@pytest.fixture(scope="session")
def retrained(tiny_checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    """Two checkpoints with one interface: a tiny BERT classifier and a copy with another head
    (what fine-tuning again gives: same config, same file sizes, other weights)."""
    import shutil

    import torch
    import transformers

    first = tiny_checkpoint("bert")
    second = tmp_path_factory.mktemp("retrained") / "bert"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(first)
    with torch.no_grad():
        model.classifier.weight.mul_(-3.0)
    model.save_pretrained(second)
    for name in checkpoints.TOKENIZER_FILES:
        shutil.copyfile(first / name, second / name)
    return first, second


# Ensembles exported once per session into one repository; e2e tests serve it.
SENTIMENT, TOPICS, DEFAULT, NER = "sentiment", "topics", "all_minilm_l6_v2", "ner"
NER_MAX_LENGTH = 48  # short, so the e2e tests see entities cut by truncation
TOPICS_FUSED = "topics_fused"  # the topics model in the fused layout (one python model)


@pytest.fixture(scope="session")
def repository(tmp_path_factory, minilm_classifier_dir, tiny_roberta_multilabel_dir, tiny_checkpoint):
    """A repository with the default embedder, a MiniLM sentiment classifier, a tiny
    multi-label RoBERTa (max batch 8, so clients must chunk) with its int8 variants served
    side by side (``topics_int8_qdq``, ``topics_int8_dynamic``, ...) and also in the fused
    layout, and a tiny BERT NER model."""
    from hf2triton.pipeline import ExportOptions, export_checkpoint
    from hf2triton.repository import ServingOptions
    from hf2triton.precision.variants import VariantOptions

    root = tmp_path_factory.mktemp("repository") / "model_repository"
    ensemble = ServingOptions(layout="ensemble")  # these tests reach the steps; the fused ones have their own
    results = {
        DEFAULT: export_checkpoint(ExportOptions(output_dir=root, serving=ensemble)),
        SENTIMENT: export_checkpoint(ExportOptions(checkpoint=minilm_classifier_dir, output_dir=root, name=SENTIMENT,
                                                   serving=ensemble)),
        TOPICS: export_checkpoint(
            ExportOptions(checkpoint=tiny_roberta_multilabel_dir, output_dir=root, name=TOPICS,
                          max_text_bytes=2000, serving=ServingOptions(max_batch_size=8),
                          variants=VariantOptions(precisions=("fp32", "int8"), calibration_method="minmax",
                                                  benchmark=False, min_agreement=0.01, min_cosine=0.01))
        ),
        NER: export_checkpoint(
            ExportOptions(checkpoint=tiny_checkpoint("bert", "token-classification"), output_dir=root, name=NER,
                          max_length=NER_MAX_LENGTH, aggregation="first")
        ),
        TOPICS_FUSED: export_checkpoint(
            ExportOptions(checkpoint=tiny_roberta_multilabel_dir, output_dir=root, name=TOPICS_FUSED,
                          max_text_bytes=2000, serving=ServingOptions(max_batch_size=8, layout="fused"))
        ),
    }
    return root, results


@pytest.fixture(scope="session")
def server(repository, tmp_path_factory):
    """One real tritonserver (the bundled CPU build) on free loopback ports for all e2e tests."""
    from hf2triton.serving import LocalTritonServer, ServerConfig

    root, _ = repository
    log_file = tmp_path_factory.mktemp("server") / "tritonserver.log"
    config = ServerConfig(model_repository=root, http_port=0, grpc_port=0, metrics_port=0, log_file=log_file,
                          metrics_config=("summary_latencies=true",))  # as docker-compose.yml runs it
    with LocalTritonServer(config).start(ready_timeout_s=180) as running:
        yield running
