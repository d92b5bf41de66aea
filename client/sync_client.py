"""Query a served hf2triton ensemble over gRPC or HTTP (KServe v2) with the synchronous client.

Run (server started with ``hf2triton serve`` or the container: HTTP 8000, gRPC 8001)::

    python client/sync_client.py                                   # gRPC, default model
    python client/sync_client.py --protocol http "first text" "second text"
    python client/sync_client.py --url 127.0.0.1:8001 --model sentiment "What a great film"
    python client/sync_client.py --ssl --root-certificates ca.pem --url triton.example:8001   # gRPC TLS

Without an installed package, prefix with ``PYTHONPATH=src``. Embedding models print
each vector's size and the cosine-similarity matrix; classifiers print labels and scores;
token classifiers print each entity with its span in the text.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from hf2triton.client import DEFAULT_MODEL, Classification, Client, Embedding, Entities, Result
from hf2triton.errors import Hf2TritonError

DEFAULT_TEXTS = [
    "Triton serves many models at once.",
    "An inference server runs several models side by side.",
    "The cat sat on the mat.",
]


DEFAULT_URLS = {"grpc": "127.0.0.1:8001", "http": "127.0.0.1:8000"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="*", help="texts to send (default: three example sentences)")
    parser.add_argument("--protocol", choices=sorted(DEFAULT_URLS), default="grpc")
    parser.add_argument("--url", help="host:port of the server (default 127.0.0.1:8001 for grpc, :8000 for http)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"ensemble name (default {DEFAULT_MODEL})")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the model to be ready")
    tls = parser.add_argument_group("TLS (https:// urls turn it on for HTTP)")
    tls.add_argument("--ssl", action="store_true", help="use TLS (gRPC)")
    tls.add_argument("--root-certificates", help="PEM file of the CAs to trust (default: the system's)")
    tls.add_argument("--private-key", help="PEM client key, for servers that verify clients")
    tls.add_argument("--certificate-chain", help="PEM client certificate, with --private-key")
    return parser.parse_args(argv)


def print_results(texts: list[str], results: list[Result]) -> None:
    """Print classifications, entities, or embeddings with their cosine similarities."""
    for text, result in zip(texts, results):
        cut = " (truncated)" if result.truncated else ""
        if isinstance(result, Classification):
            top = ", ".join(f"{name}={p:.3f}" for name, p in sorted(result.scores.items(), key=lambda kv: -kv[1])[:5])
            print(f"{result.label:>12}  {result.score:.3f}  {text!r}{cut}  [{top}]")
        elif isinstance(result, Embedding):
            head = " ".join(f"{x:+.3f}" for x in result.vector[:4])
            print(f"dim={result.vector.shape[0]} [{head} ...]  {text!r}{cut}")
        elif isinstance(result, Entities):
            print(f"{len(result.entities)} entities  {text!r}{cut}")
            for e in result.entities:
                print(f"{e.label:>12}  {e.score:.3f}  [{e.start}:{e.end}] {text[e.start:e.end]!r}")
    vectors = [r.vector for r in results if isinstance(r, Embedding)]
    if len(vectors) > 1:
        matrix = np.stack(vectors)
        print("cosine similarity:")
        print(np.array2string(matrix @ matrix.T, precision=3, suppress_small=True))


def run(args: argparse.Namespace) -> int:
    texts = args.texts or DEFAULT_TEXTS
    protocol, url = args.protocol, args.url or DEFAULT_URLS[args.protocol]
    try:
        with Client(url, protocol=protocol, model=args.model, ssl=args.ssl, root_certificates=args.root_certificates,
                    private_key=args.private_key, certificate_chain=args.certificate_chain) as client:
            info = client.wait_for_model(timeout_s=args.wait)
            print(f"{info.name}: task={info.task} max_batch_size={info.max_batch_size} "
                  f"max_sequence_length={info.max_sequence_length} via {protocol} at {url}")
            print_results(texts, client.infer(texts))
    except Hf2TritonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
