"""Precision variants on real (tiny) exported models: calibration input, the accuracy guard
and its fp32 fallback, fp16 and dynamic int8, repository flavours, the engine builder."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from hf2triton.precision.accuracy import evaluation_set, measure
from hf2triton.precision.calibration import (CalibrationDataError, packaged_texts, packed_feeds, read_texts,
                                   unpadded_feeds)
from hf2triton.export.checkpoint import inspect_checkpoint
from hf2triton.precision.fp16 import guarded_fp16
from hf2triton.export.onnx_export import export_onnx, load_torch_model
from hf2triton.precision.quantize import QuantizationError, dynamic_int8, exclusion_search, guarded_qdq, weight_nodes
from hf2triton.export.tokenization import served_tokenizer, tokenizer_settings, write_tokenizer_json

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_checkpoint):
    """A tiny BERT classifier exported to fp32 ONNX, with its tokenizer and held-out set."""
    import torch
    import transformers

    work = tmp_path_factory.mktemp("precision")
    # Sharper head than the shared tiny model's: labels far from ties, as a trained model's are.
    sharp = transformers.AutoModelForSequenceClassification.from_pretrained(tiny_checkpoint("bert"))
    with torch.no_grad():
        sharp.classifier.weight.mul_(30.0)
    sharp.save_pretrained(work / "sharp")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (work / "sharp" / name).write_bytes((tiny_checkpoint("bert") / name).read_bytes())
    checkpoint = inspect_checkpoint(work / "sharp", max_length=64)
    tokenizer_json = write_tokenizer_json(checkpoint, work / "tokenizer.json")
    settings = tokenizer_settings(tokenizer_json, checkpoint, 65536)
    tokenizer = served_tokenizer(tokenizer_json, settings)
    fp32 = export_onnx(load_torch_model(checkpoint), checkpoint, work / "model.onnx")
    evaluation = evaluation_set(fp32, checkpoint, tokenizer, settings, packaged_texts("heldout")[:64])
    return work, checkpoint, tokenizer, settings, fp32, evaluation


def test_shipped_text_sets_are_disjoint_and_sized():
    calibration, heldout = packaged_texts("calibration"), packaged_texts("heldout")
    assert len(calibration) >= 300 and len(heldout) >= 200
    assert not set(calibration) & set(heldout)


def test_calibration_files_in_three_formats(tmp_path):
    texts = [f"sentence number {i}" for i in range(10)]
    (tmp_path / "a.txt").write_text("\n".join(texts) + "\n\n")
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"review": t}) for t in texts))
    (tmp_path / "a.csv").write_text("id,review\n" + "\n".join(f"{i},{t}" for i, t in enumerate(texts)))
    assert read_texts(tmp_path / "a.txt") == texts
    assert read_texts(tmp_path / "a.jsonl", column="review") == texts
    assert read_texts(tmp_path / "a.csv", column="review") == texts
    with pytest.raises(CalibrationDataError, match="no column 'text'"):
        read_texts(tmp_path / "a.csv")
    with pytest.raises(CalibrationDataError, match=":1: no string field 'text'"):
        read_texts(tmp_path / "a.jsonl")
    (tmp_path / "few.txt").write_text("one\ntwo\n")
    with pytest.raises(CalibrationDataError, match="2 texts; calibration needs at least 8"):
        read_texts(tmp_path / "few.txt")


def test_calibration_feeds_carry_no_padding(tiny):
    _, _, tokenizer, settings, _, _ = tiny
    texts = packaged_texts("calibration")[:20]
    for feed in unpadded_feeds(tokenizer, texts, settings).feeds + packed_feeds(tokenizer, texts, settings, 32).feeds:
        assert feed["attention_mask"].all()
    packed = packed_feeds(tokenizer, texts, settings, 32).feeds
    assert {f["input_ids"].shape for f in packed} == {(1, 32)}  # histogram calibrators need one shape


def test_exclusion_search_finds_the_fewest_nodes():
    calls = []

    def passes(k):
        calls.append(k)
        return k >= 5

    assert exclusion_search(passes, limit=30) == 5
    assert calls[:4] == [0, 1, 2, 4] and len(calls) < 10
    assert exclusion_search(lambda k: False, limit=6) is None
    assert exclusion_search(lambda k: True, limit=6) == 0


def test_int8_qdq_is_symmetric_per_channel_on_weight_matmuls_only(tiny, tmp_path):
    work, checkpoint, tokenizer, settings, fp32, evaluation = tiny
    feeds = unpadded_feeds(tokenizer, packaged_texts("calibration")[:40], settings)
    result = guarded_qdq(fp32, tmp_path / "int8.onnx", checkpoint, feeds, evaluation, method="minmax",
                         min_agreement=0.0)
    assert result.fp32_nodes == () and result.accuracy.passed
    model = onnx.load(str(result.path))
    quantize = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    zero_points = {i.name: i for i in model.graph.initializer}
    assert quantize, "no Q/DQ inserted"
    for node in quantize:
        zero = onnx.numpy_helper.to_array(zero_points[node.input[2]])
        assert zero.dtype == np.int8 and not zero.any(), "activations must be symmetric int8"
    produced_by = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":  # never on a MatMul output (residual stream)
            assert produced_by.get(node.input[0]) is None or produced_by[node.input[0]].op_type != "MatMul"
    assert len(result.quantized_nodes) == len(weight_nodes(onnx.load(str(fp32))))


OUTLIER_SCALE = 1e4
ATTENTION_GAIN = 50.0


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    """A tiny BERT embedder built so that full int8 must fail and one node per layer explains it.

    In every layer, one channel of the attention value projection is scaled by 10⁴ and the
    matching input row of the attention output projection by 10⁻⁴: fp32 computes the same
    function, but that projection's input now has one channel 10⁴× the others, so symmetric
    per-tensor int8 rounds every other channel to zero — in that node only. The output
    projection is also made 50× stronger (random-init attention barely moves the residual
    stream), so losing it shows in the embeddings. The same story as MiniLM's FFN output
    projections, fed by GELU's long tail.
    """
    import torch
    import transformers

    import checkpoints

    work = tmp_path_factory.mktemp("outlier")
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(vocab_size=30522, **checkpoints.TINY)).eval()
    with torch.no_grad():
        for layer in model.encoder.layer:
            layer.attention.self.value.weight[0] *= OUTLIER_SCALE
            layer.attention.self.value.bias[0] *= OUTLIER_SCALE
            layer.attention.output.dense.weight.mul_(ATTENTION_GAIN)
            layer.attention.output.dense.weight[:, 0] /= OUTLIER_SCALE
    model.save_pretrained(work / "checkpoint")
    checkpoints.copy_wordpiece_tokenizer(work / "checkpoint")
    checkpoint = inspect_checkpoint(work / "checkpoint", max_length=64)
    assert checkpoint.task.name == "embeddings"
    tokenizer_json = write_tokenizer_json(checkpoint, work / "tokenizer.json")
    settings = tokenizer_settings(tokenizer_json, checkpoint, 65536)
    tokenizer = served_tokenizer(tokenizer_json, settings)
    fp32 = export_onnx(load_torch_model(checkpoint), checkpoint, work / "model.onnx")
    evaluation = evaluation_set(fp32, checkpoint, tokenizer, settings, packaged_texts("heldout")[:64])
    feeds = unpadded_feeds(tokenizer, packaged_texts("calibration")[:40], settings)
    return checkpoint, fp32, evaluation, feeds, len(model.encoder.layer)


def test_guard_falls_back_to_fp32_exactly_where_int8_breaks(outlier, tmp_path):
    checkpoint, fp32, evaluation, feeds, layers = outlier
    threshold = 0.99
    guarded = guarded_qdq(fp32, tmp_path / "guarded.onnx", checkpoint, feeds, evaluation, method="minmax",
                          min_cosine=threshold)
    full = guarded.steps[0]
    assert full.excluded == 0 and full.accuracy.value < threshold, "full int8 must miss the threshold"
    assert guarded.accuracy.metric == "mean_cosine" and guarded.accuracy.value >= threshold
    assert measure(guarded.path, evaluation, checkpoint, min_cosine=threshold).value >= threshold
    # The fallback happened, and kept in fp32 exactly the attention output projections.
    expected = {f"/model/encoder/layer.{i}/attention/output/dense/MatMul" for i in range(layers)}
    assert set(guarded.fp32_nodes) == expected, guarded.fp32_nodes
    assert not expected & set(guarded.quantized_nodes)
    graph = onnx.load(str(guarded.path)).graph
    produced_by = {o: n.op_type for n in graph.node for o in n.output}
    kept = [n for n in graph.node if n.name in expected]
    assert len(kept) == layers and all(produced_by.get(i) != "DequantizeLinear" for n in kept for i in n.input)
    others = [n for n in graph.node if n.op_type == "MatMul" and n.name in guarded.quantized_nodes]
    assert others and all(any(produced_by.get(i) == "DequantizeLinear" for i in n.input) for n in others)


def test_guard_that_cannot_pass_fails_clearly(outlier, tmp_path):
    checkpoint, fp32, evaluation, feeds, layers = outlier
    with pytest.raises(QuantizationError, match=r"no INT8 QDQ variant met mean_cosine ≥ 0.99 even with 1 of"):
        guarded_qdq(fp32, tmp_path / "never.onnx", checkpoint, feeds, evaluation, method="minmax",
                    min_cosine=0.99, max_fp32_nodes=1)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_methods_work(tiny, tmp_path, method):
    work, checkpoint, tokenizer, settings, fp32, evaluation = tiny
    feeds = packed_feeds(tokenizer, packaged_texts("calibration")[:60], settings, 32)
    result = guarded_qdq(fp32, tmp_path / f"{method}.onnx", checkpoint, feeds, evaluation, method=method,
                         min_agreement=0.0)
    assert result.path.exists()


def test_fp16_and_dynamic_int8_pass_the_guard(tiny, tmp_path):
    work, checkpoint, tokenizer, settings, fp32, evaluation = tiny
    half = guarded_fp16(fp32, tmp_path / "fp16.onnx", checkpoint, evaluation)
    assert half.accuracy.passed
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in onnx.load(str(half.path)).graph.initializer)
    assert [i.type.tensor_type.elem_type for i in onnx.load(str(half.path)).graph.output] == [onnx.TensorProto.FLOAT]
    for fused in (False, True):
        path = dynamic_int8(fp32, tmp_path / f"dyn{fused}.onnx", fused=fused,
                            heads=checkpoint.attention_heads, hidden=checkpoint.hidden_size)
        assert measure(path, evaluation, checkpoint).passed


def run_export(*args):
    return subprocess.run([sys.executable, "build/export.py", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=600)


def test_export_with_variants_writes_side_by_side_ensembles_and_a_report(tmp_path, tiny_checkpoint):
    result = run_export(str(tiny_checkpoint("distilbert")), "-o", str(tmp_path), "-n", "clf",
                        "--precision", "fp32,fp16,int8", "--calibration-method", "minmax", "--select",
                        "--min-agreement", "0.01")  # the guard is tested above; here, the machinery
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "clf" / "report.json").read_text())
    built = set(report["variants"]) | set(report["rejected"])
    assert built == {"fp32", "fp16", "int8_qdq", "int8_dynamic", "int8_dynamic_fused"}
    assert all(report["variants"][v]["accuracy"]["passed"] for v in set(report["variants"]) - {"fp32"})
    assert len(report["latency_ms"]) == 9 and report["selection"]
    served = report["served"]
    for variant in set(report["variants"]) - {served}:
        assert (tmp_path / f"clf_{variant}" / "config.pbtxt").exists()
        assert (tmp_path / f"clf_model_{variant}" / "1" / "model.onnx").exists()
    assert "variant" in result.stdout and "x fp32" in result.stdout


def test_onnxruntime_backend_flavour(tmp_path, tiny_checkpoint):
    from hf2triton.repository import parse_pbtxt

    result = run_export(str(tiny_checkpoint("roberta")), "-o", str(tmp_path), "-n", "clf", "--backend",
                        "onnxruntime", "--ort-tensorrt-precision", "FP16", "--precision", "fp32,int8",
                        "--calibration-method", "minmax", "--no-benchmark", "--min-agreement", "0.01")
    assert result.returncode == 0, result.stderr
    config = parse_pbtxt((tmp_path / "clf_model" / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx" and config.default_model_filename == "model.onnx"
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert not (tmp_path / "clf_model" / "1" / "model.py").exists()
    variant = parse_pbtxt((tmp_path / "clf_model_int8_dynamic" / "config.pbtxt").read_text())
    assert variant.platform == "onnxruntime_onnx"
    assert parse_pbtxt((tmp_path / "clf_tokenizer" / "config.pbtxt").read_text()).backend == "python"


def test_engines_without_tensorrt_stop_with_a_clear_message_and_no_repository(tmp_path, tiny_checkpoint):
    if subprocess.run([sys.executable, "-c", "import tensorrt"], capture_output=True).returncode == 0:
        pytest.skip("TensorRT is installed here: --engines builds for real (scripts/gpu_check.sh covers it)")
    result = run_export(str(tiny_checkpoint("bert")), "-o", str(tmp_path / "repo"), "--precision",
                        "fp32,int8", "--engines")
    assert result.returncode == 2
    assert "TensorRT is not installed" in result.stderr and "builder" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "repo").exists()
    result = run_export(str(tiny_checkpoint("bert")), "-o", str(tmp_path / "repo"), "--backend", "tensorrt")
    assert result.returncode == 2 and "--engines" in result.stderr


def test_lora_adapter_is_merged_before_export(tmp_path, tiny_checkpoint):
    """A PEFT checkpoint exports like any other: the served ONNX equals base + adapter in PyTorch."""
    import torch
    import transformers
    from peft import PeftModel

    import checkpoints
    from hf2triton.pipeline import ExportOptions, export_checkpoint

    base = tiny_checkpoint("bert")
    adapter = checkpoints.lora_adapter(tmp_path / "adapter", base)
    before = sorted(p.name for p in adapter.iterdir())
    result = export_checkpoint(ExportOptions(checkpoint=adapter, output_dir=tmp_path / "repo", name="lora"))
    assert result.parity.passed
    assert sorted(p.name for p in adapter.iterdir()) == before, "the adapter folder is read-only input"
    manifest = json.loads((tmp_path / "repo" / "lora" / "hf2triton.json").read_text())
    assert manifest["checkpoint"]["peft_adapter_merged"] and manifest["checkpoint"]["path"] == str(adapter)

    peft_model = PeftModel.from_pretrained(transformers.AutoModelForSequenceClassification.from_pretrained(base),
                                           adapter).eval()
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(base).eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    feed = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        expected, unadapted = peft_model(**feed).logits.numpy(), plain(**feed).logits.numpy()
    import onnxruntime as ort

    session = ort.InferenceSession(str(result.layout.onnx_file))
    served = session.run(None, {k: v.numpy() for k, v in feed.items()})[0]
    np.testing.assert_allclose(served, expected, atol=1e-4)
    assert np.abs(expected - unadapted).max() > 1e-3, "the adapter must change the answers"


def test_adapter_with_missing_base_is_a_clear_error(tmp_path, tiny_checkpoint):
    import checkpoints
    from hf2triton.errors import CheckpointError
    from hf2triton.pipeline import ExportOptions, export_checkpoint

    adapter = checkpoints.lora_adapter(tmp_path / "adapter", tiny_checkpoint("bert"))
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "bert-base-uncased"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="not a local checkpoint folder; hf2triton never downloads"):
        export_checkpoint(ExportOptions(checkpoint=adapter, output_dir=tmp_path / "repo"))


def test_variants_the_guard_rejects_are_reported_not_served(tmp_path, tiny_checkpoint):
    result = run_export(str(tiny_checkpoint("electra")), "-o", str(tmp_path), "-n", "clf", "--precision",
                        "fp32,int8", "--calibration-method", "minmax", "--min-agreement", "1")
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "clf" / "report.json").read_text())
    assert set(report["rejected"]) == {"int8_qdq", "int8_dynamic", "int8_dynamic_fused"}
    assert report["served"] == "fp32" and list(report["variants"]) == ["fp32"]
    assert not list(tmp_path.glob("clf_int8*")) and "not served" in result.stdout


# ------------------------------------------------------------------ select_variant and option checks


def variant(name: str, passed: bool = True) -> "Variant":
    from hf2triton.precision.accuracy import Accuracy
    from hf2triton.precision.variants import Variant

    accuracy = None if name == "fp32" else Accuracy("mean_cosine", 0.999 if passed else 0.5, 0.99, 0.99)
    return Variant(name, Path(f"{name}.onnx"), accuracy, 1)


def grid(**speedups: float) -> list:
    """Batch-32 cells (and a batch-1 cell that must be ignored) where each variant runs
    ``speedup``× faster than fp32's 100 ms."""
    from hf2triton.precision.variants import GridCell

    cells = []
    for length in (16, 64, 128):
        ms = {"fp32": 100.0, **{name: 100.0 / s for name, s in speedups.items()}}
        cells.append(GridCell(32, length, ms, 0.0))
        cells.append(GridCell(1, length, {name: 1.0 for name in ms}, 0.0))
    return cells


def test_select_needs_1_1x_the_current_choice():
    from hf2triton.precision.variants import WORTH_IT, select_variant

    assert WORTH_IT == 1.10
    chosen, notes = select_variant([variant("fp32"), variant("int8_dynamic")], grid(int8_dynamic=1.09))
    assert chosen.name == "fp32" and "not worth it, 1.09×" in notes[0]
    chosen, notes = select_variant([variant("fp32"), variant("int8_dynamic")], grid(int8_dynamic=1.11))
    assert chosen.name == "int8_dynamic" and notes == ["int8_dynamic: 1.11× fp32 at batch 32"]


def test_select_compares_each_variant_with_the_one_chosen_so_far_and_ties_keep_the_first():
    from hf2triton.precision.variants import select_variant

    both = [variant("fp32"), variant("int8_dynamic"), variant("int8_dynamic_fused")]
    chosen, notes = select_variant(both, grid(int8_dynamic=1.5, int8_dynamic_fused=1.5))
    assert chosen.name == "int8_dynamic"  # a tie with the current choice is no gain
    assert "int8_dynamic_fused: not worth it, 1.00× int8_dynamic" in notes[1]
    chosen, _ = select_variant(both, grid(int8_dynamic=1.5, int8_dynamic_fused=1.5 * 1.12))
    assert chosen.name == "int8_dynamic_fused"
    chosen, _ = select_variant(both, grid(int8_dynamic=1.5, int8_dynamic_fused=1.5 * 1.05))
    assert chosen.name == "int8_dynamic"  # faster than fp32 by 1.575×, but not 1.1× the dynamic one


def test_select_serves_fp32_when_no_variant_passes_the_guard():
    from hf2triton.precision.variants import select_variant

    failing = [variant("fp32"), variant("int8_dynamic", passed=False), variant("fp16", passed=False)]
    chosen, notes = select_variant(failing, grid(int8_dynamic=3.0, fp16=2.0))
    assert chosen.name == "fp32" and len(notes) == 2 and all("not eligible" in n for n in notes)


@pytest.mark.parametrize("threshold", [0.0, -0.5, 1.01, 2.0])
def test_guard_thresholds_that_disable_or_defeat_the_guard_are_refused(threshold):
    from hf2triton.errors import OptionsError
    from hf2triton.precision.options import VariantOptions

    with pytest.raises(OptionsError, match=r"--min-agreement must be in \(0, 1\]"):
        VariantOptions(precisions=("fp32", "int8"), min_agreement=threshold, min_cosine=threshold)
    VariantOptions(precisions=("fp32", "int8"), min_agreement=1.0, min_cosine=0.01)  # the bounds are fine
