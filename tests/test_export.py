"""Export end to end on real checkpoints: ONNX, parity report, repository, configs, refusals."""

import json
import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from tritonclient.grpc import model_config_pb2 as pb

from conftest import DEFAULT, NER, SENTIMENT, TOPICS, TOPICS_FUSED
from hf2triton import contract
from hf2triton.backends import batching, onnx_model, postprocess, tokenizer
from hf2triton.errors import ParityError, RepositoryError
from hf2triton.pipeline import ExportOptions, export_checkpoint
from hf2triton.repository import parse_pbtxt

REPO_ROOT = Path(__file__).resolve().parents[1]


def configs(root: Path) -> dict[str, pb.ModelConfig]:
    return {p.parent.name: parse_pbtxt(p.read_text()) for p in root.glob("*/config.pbtxt")}


def test_parity_figures_per_task(repository):
    _, results = repository
    embed, sentiment, topics = results[DEFAULT].parity, results[SENTIMENT].parity, results[TOPICS].parity
    assert embed.passed and embed.metric == "min_cosine" and embed.metric_value > 0.9999
    assert embed.max_abs_diff < 1e-4 and embed.truncated_texts >= 1
    assert sentiment.passed and sentiment.metric == "label_agreement" and sentiment.metric_value == 1.0
    assert topics.passed


def test_every_config_parses_and_the_ensemble_is_wired(repository):
    root, results = repository
    parsed = configs(root)
    assert set(parsed) == {d.name for result in results.values() for d in result.layout.model_dirs}
    assert {f"{TOPICS}_int8_qdq", f"{TOPICS}_model_int8_qdq"} <= set(parsed)  # variants side by side
    assert TOPICS_FUSED in parsed and f"{TOPICS_FUSED}_model" not in parsed  # the fused layout is one model
    fused_rows = parsed[TOPICS_FUSED].max_batch_size
    assert list(parsed[TOPICS_FUSED].dynamic_batching.preferred_batch_size) == sorted(
        {fused_rows // 4, fused_rows // 2, fused_rows})
    for name in (DEFAULT, SENTIMENT, TOPICS, NER, f"{TOPICS}_int8_qdq"):
        ensemble = parsed[name]
        assert ensemble.platform == "ensemble"
        classifier = ensemble.parameters[contract.PARAM_TASK].string_value == "sequence-classification"
        pair = [contract.INPUT_TEXT_PAIR] if classifier else []  # optional: single texts keep working
        assert [i.name for i in ensemble.input] == [contract.INPUT_TEXT, *pair]
        assert [i.optional for i in ensemble.input] == [False, *[True for _ in pair]]
        assert {i.data_type for i in ensemble.input} == {pb.TYPE_STRING}
        available = {contract.INPUT_TEXT, *pair}
        for step in ensemble.ensemble_scheduling.step:
            step_config = parsed[step.model_name]
            assert set(step.input_map) == {t.name for t in step_config.input}
            assert set(step.input_map.values()) <= available, f"{step.model_name} reads a tensor nobody made"
            assert set(step.output_map) == {t.name for t in step_config.output}
            available |= set(step.output_map.values())
            assert step_config.max_batch_size == ensemble.max_batch_size
            assert step_config.HasField("dynamic_batching")
        tokenizer_step, model_step = (parsed[s.model_name] for s in ensemble.ensemble_scheduling.step[:2])
        rows = model_step.max_batch_size
        # Two python-ort instances share a long queue: a quarter, half and all of it per execution.
        assert list(model_step.dynamic_batching.preferred_batch_size) == sorted({rows // 4, rows // 2, rows})
        assert not tokenizer_step.dynamic_batching.preferred_batch_size
        assert {o.name for o in ensemble.output} <= available
        assert ensemble.parameters[contract.PARAM_TASK].string_value in (
            "embeddings", "sequence-classification", "token-classification")


def test_step_configs_per_task(repository):
    root, _ = repository
    parsed = configs(root)
    tok = parsed[f"{DEFAULT}_tokenizer"]
    assert [t.name for t in tok.output] == ["input_ids", "attention_mask", "token_type_ids", contract.OUTPUT_TRUNCATED]
    assert [t.name for t in parsed[f"{TOPICS}_tokenizer"].output] == ["input_ids", "attention_mask", "TRUNCATED"]
    assert list(parsed[f"{DEFAULT}_postprocess"].output[0].dims) == [384]
    sentiment = parsed[SENTIMENT]
    assert json.loads(sentiment.parameters[contract.PARAM_LABELS].string_value) == ["negative", "neutral", "positive"]
    assert parsed[TOPICS].parameters[contract.PARAM_MULTI_LABEL].string_value == "true"
    assert parsed[TOPICS].max_batch_size == 8
    assert parsed[f"{TOPICS}_tokenizer"].backend == "python"


def test_token_classification_steps_pass_offsets_and_return_entities(repository):
    root, results = repository
    parsed = configs(root)
    tok, post, ensemble = parsed[f"{NER}_tokenizer"], parsed[f"{NER}_postprocess"], parsed[NER]
    outputs = {t.name: t for t in tok.output}
    assert list(outputs["offset_mapping"].dims) == [-1, 2] and list(outputs["special_tokens_mask"].dims) == [-1]
    assert [t.name for t in post.input] == ["TEXT", "input_ids", "offset_mapping", "special_tokens_mask", "logits"]
    assert [(o.name, o.data_type, list(o.dims)) for o in ensemble.output] == [
        ("ENTITIES", pb.TYPE_STRING, [1]), ("TRUNCATED", pb.TYPE_BOOL, [1])]
    assert ensemble.parameters[contract.PARAM_AGGREGATION].string_value == "first"
    assert (root / f"{NER}_postprocess" / "1" / "tokenizer.json").exists()
    settings = json.loads(post.parameters["settings"].string_value)
    assert settings["word_aware"] and settings["unk_id"] == 100 and settings["ignore_labels"] == ["O"]
    parity = results[NER].parity
    assert parity.passed and parity.metric == "token_label_agreement" and parity.metric_value == 1.0
    assert parity.truncated_texts >= 1
    # the other tasks' tokenizers emit no alignment tensors
    assert "offset_mapping" not in {t.name for t in parsed[f"{SENTIMENT}_tokenizer"].output}


def test_repository_is_self_contained_and_relocatable(repository):
    root, results = repository
    checkpoint_paths = {str(r.checkpoint.path) for r in results.values()}
    for config in root.glob("*/config.pbtxt"):
        text = config.read_text()
        assert not any(path in text for path in checkpoint_paths), f"{config} points outside the repository"
    for name in (DEFAULT, SENTIMENT, TOPICS):
        tok, model, post = contract.step_names(name)
        assert (root / tok / "1" / "tokenizer.json").exists()
        assert (root / model / "1" / "model.onnx").exists()
        assert (root / name / "1").is_dir()  # ensembles need an (empty) version folder
        for step, module in ((tok, tokenizer), (model, onnx_model), (post, postprocess)):
            assert (root / step / "1" / "model.py").read_text() == Path(module.__file__).read_text()
        # the model step imports its batch planning from beside it, as the stub loads it
        assert (root / model / "1" / "batching.py").read_text() == Path(batching.__file__).read_text()


def test_onnx_file_has_dynamic_axes_and_plain_ops(repository):
    root, _ = repository
    graph = onnx.load(str(root / f"{DEFAULT}_model" / "1" / "model.onnx")).graph
    for tensor in graph.input:
        dims = tensor.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "sequence"]
    assert all(node.domain in ("", "ai.onnx") for node in graph.node), "contrib ops would not parse in TensorRT"
    session = ort.InferenceSession(str(root / f"{DEFAULT}_model" / "1" / "model.onnx"))
    assert [o.name for o in session.get_outputs()] == ["last_hidden_state"]


def test_manifest_and_report_are_written(repository):
    root, results = repository
    manifest = json.loads((root / SENTIMENT / "hf2triton.json").read_text())
    assert manifest["task"] == "sequence-classification"
    assert manifest["checkpoint"]["fingerprint"] == results[SENTIMENT].checkpoint.fingerprint
    assert manifest["versions"]["torch"].startswith("2.")
    assert manifest["buckets"][-1] == manifest["max_sequence_length"] == 512
    report = json.loads((root / DEFAULT / "parity.json").read_text())
    assert report["passed"] and report["metric"] == "min_cosine" and report["max_abs_diff"] < 1e-4


def test_reexporting_the_same_checkpoint_replaces_it(tmp_path, tiny_checkpoint):
    source = tiny_checkpoint("distilbert")
    first = export_checkpoint(ExportOptions(checkpoint=source, output_dir=tmp_path, name="clf"))
    again = export_checkpoint(ExportOptions(checkpoint=source, output_dir=tmp_path, name="clf", max_length=64))
    assert first.layout.root == again.layout.root
    assert json.loads((tmp_path / "clf" / "hf2triton.json").read_text())["max_sequence_length"] == 64
    assert not list(tmp_path.parent.glob(".clf-staging-*")), "staging folders are cleaned up"


def test_a_different_model_is_refused_unless_overwrite(tmp_path, tiny_checkpoint):
    export_checkpoint(ExportOptions(checkpoint=tiny_checkpoint("distilbert"), output_dir=tmp_path, name="clf"))
    other = tiny_checkpoint("electra")
    with pytest.raises(RepositoryError, match="already holds a different model.*--overwrite"):
        export_checkpoint(ExportOptions(checkpoint=other, output_dir=tmp_path, name="clf"))
    result = export_checkpoint(ExportOptions(checkpoint=other, output_dir=tmp_path, name="clf", overwrite=True))
    assert json.loads((tmp_path / "clf" / "hf2triton.json").read_text())["checkpoint"]["model_type"] == "electra"
    assert result.parity.passed


def test_a_folder_that_is_not_ours_is_refused(tmp_path, tiny_checkpoint):
    (tmp_path / "clf_model").mkdir(parents=True)
    with pytest.raises(RepositoryError, match="clf_model"):
        export_checkpoint(ExportOptions(checkpoint=tiny_checkpoint("bert"), output_dir=tmp_path, name="clf"))


def test_parity_failure_stops_the_export_and_leaves_no_repository(tmp_path, minilm_classifier_dir):
    with pytest.raises(ParityError, match=r"parity FAILED: max \|onnx - torch\| = .* \(atol 1e-12\)"):
        export_checkpoint(ExportOptions(checkpoint=minilm_classifier_dir, output_dir=tmp_path / "repo", atol=1e-12))
    assert not (tmp_path / "repo").exists()
    result = export_checkpoint(ExportOptions(checkpoint=minilm_classifier_dir, output_dir=tmp_path / "repo",
                                             atol=1e-12, allow_parity_failure=True))
    assert not result.parity.passed
    assert json.loads((tmp_path / "repo" / "sentiment" / "parity.json").read_text())["passed"] is False


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)


def test_export_script_help_documents_every_option():
    result = run_cli("build/export.py", "--help")
    assert result.returncode == 0
    for option in ("--output", "--name", "--task", "--max-length", "--max-batch-size", "--opset", "--atol",
                   "--overwrite", "--max-text-bytes", "--allow-parity-failure", "--aggregation"):
        assert option in result.stdout


def test_export_script_reports_bad_checkpoints_without_traceback(tmp_path):
    result = run_cli("build/export.py", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert "error: checkpoint directory" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("-m", "hf2triton.cli", "export", str(tmp_path), "--name", "bad name!")
    assert result.returncode == 2 and "model name 'bad name!' is invalid" in result.stderr


def test_export_script_writes_a_repository(tmp_path, tiny_checkpoint):
    result = run_cli("build/export.py", str(tiny_checkpoint("roberta")), "-o", str(tmp_path / "repo"))
    assert result.returncode == 0, result.stderr
    assert "parity passed" in result.stdout
    name = tiny_checkpoint("roberta").name.replace("-", "_")
    assert (tmp_path / "repo" / name / "config.pbtxt").exists()
