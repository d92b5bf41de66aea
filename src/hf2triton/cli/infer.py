"""``hf2triton infer`` (a running server) and ``hf2triton demo`` (start, answer, stop)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hf2triton.contract import DEFAULT_MODEL_NAME, DEFAULT_REPOSITORY, PROTOCOLS

DEMO_TEXTS = ("hf2triton serves Hugging Face models on Triton.", "The weather is lovely today.")
DEMO_TIMEOUT_S = 60.0


def register(commands: argparse._SubParsersAction) -> None:
    infer = commands.add_parser("infer", help="send texts to a running server and print the answers")
    infer.add_argument("texts", nargs="*", help="texts (default: one per line from stdin)")
    add_client_arguments(infer)
    infer.set_defaults(run=run_infer)

    demo = commands.add_parser("demo", help="start the local server, answer a request, stop")
    demo.add_argument("texts", nargs="*", help="texts to send (default: two examples)")
    demo.add_argument("--model-repository", type=Path, default=Path(DEFAULT_REPOSITORY),
                      help="(default: %(default)s)")
    demo.add_argument("--model", default=DEFAULT_MODEL_NAME, help="served model name (default: %(default)s)")
    demo.add_argument("--timeout", type=float, default=DEMO_TIMEOUT_S,
                      help="seconds to wait for the model (default: %(default)s)")
    demo.set_defaults(run=run_demo)


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="server address host:port (default: the local server's port for the protocol)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default=PROTOCOLS[0], help="(default: %(default)s)")
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME, help="served model name (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the model (default: %(default)s)")
    add_tls_arguments(parser)


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """The client's TLS options (infer, verify, perf); an https:// URL turns TLS on too."""
    tls = parser.add_argument_group("TLS", "connect over TLS (gRPC, or HTTP through an https:// URL)")
    tls.add_argument("--ssl", action="store_true", help="use TLS (implied by an https:// URL)")
    tls.add_argument("--root-certificates", type=Path, metavar="PEM",
                     help="CA certificates that sign the server's certificate (default: the system's trust store)")
    tls.add_argument("--private-key", type=Path, metavar="PEM",
                     help="client key, for servers that demand a client certificate (with --certificate-chain)")
    tls.add_argument("--certificate-chain", type=Path, metavar="PEM", help="client certificate (with --private-key)")


TLS_FILE_OPTIONS = ("root_certificates", "private_key", "certificate_chain")


def tls_options(args: argparse.Namespace, *urls: str | None) -> dict[str, Any]:
    """The TLS keywords of :class:`~hf2triton.client.Client` from the TLS flags (it checks the files).

    Certificate files without ``--ssl`` are a mistake unless every URL is ``https://``.
    """
    from hf2triton.errors import OptionsError

    given = [f"--{name.replace('_', '-')}" for name in TLS_FILE_OPTIONS if getattr(args, name) is not None]
    if given and not args.ssl and not all((url or "").startswith("https://") for url in urls):
        verb = "need" if len(given) > 1 else "needs"
        raise OptionsError(f"{', '.join(given)} {verb} TLS: add --ssl (or use an https:// URL)")
    # gRPC's C core logs every failed TLS handshake at INFO on stderr; the error we raise says it once.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    return {"ssl": args.ssl, "root_certificates": args.root_certificates, "private_key": args.private_key,
            "certificate_chain": args.certificate_chain}


# What gRPC reports when a plain client meets a TLS port: the server drops the connection.
_PLAIN_TO_TLS = "Socket closed"


@contextlib.contextmanager
def tls_hint(tls: dict[str, Any], *urls: str | None) -> Iterator[None]:
    """Add "add --ssl" to a refused connection that looks like a plain client at a TLS server."""
    from hf2triton.errors import ServerUnavailableError

    try:
        yield
    except ServerUnavailableError as error:
        plain = not tls["ssl"] and not any((url or "").startswith("https://") for url in urls)
        if plain and _PLAIN_TO_TLS in str(error):
            raise ServerUnavailableError(f"{error} (if the server uses TLS, add --ssl)") from error
        raise


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


def run_infer(args: argparse.Namespace) -> int:
    from hf2triton.client import Client

    # The client owns the default address per protocol (url=None) and refuses bad ones.
    tls = tls_options(args, args.url)
    with Client(args.url, protocol=args.protocol, model=args.model, **tls) as client, tls_hint(tls, args.url):
        texts = list(args.texts) or [line.rstrip("\n") for line in sys.stdin]
        client.wait_for_model(timeout_s=args.timeout)
        print_results(texts, client.infer(texts))
    return 0


def run_demo(args: argparse.Namespace) -> int:
    """Start the local server on free ports, send texts through the served model, print, stop."""
    from hf2triton.client import Client
    from hf2triton.errors import OptionsError
    from hf2triton.serving import LocalTritonServer, ServerConfig

    repository = args.model_repository.resolve()
    if not (repository / args.model).is_dir():
        raise OptionsError(f"{repository} holds no model '{args.model}'; run `python build/export.py` first "
                           "(or pass --model-repository / --model)")
    config = ServerConfig(model_repository=repository, http_port=0, grpc_port=0, metrics_port=0)
    with LocalTritonServer(config).start() as server:
        print(f"tritonserver ready (gRPC {server.grpc_url}, HTTP {server.http_url}, log {server.log_path})")
        texts = list(args.texts) or list(DEMO_TEXTS)
        with Client(server.grpc_url, protocol="grpc", model=args.model) as client:
            info = client.wait_for_model(timeout_s=args.timeout)
            print(f"model '{info.name}': task {info.task}, max batch {info.max_batch_size}")
            print_results(texts, client.infer(texts))
    return 0
