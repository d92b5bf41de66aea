"""Send many texts concurrently with the asyncio client over gRPC.

Run (gRPC on port 8001)::

    python client/async_client.py
    python client/async_client.py --url 127.0.0.1:8001 --copies 200 --concurrency 8 "some text"

Without an installed package, prefix with ``PYTHONPATH=src``. The texts (argv or the
defaults) are repeated ``--copies`` times; :class:`AsyncClient` splits them into
requests of at most the model's ``max_batch_size`` and sends up to ``--concurrency``
at once, while several such calls also run side by side (``--calls``).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from hf2triton.client import DEFAULT_MODEL, AsyncClient, Classification, Embedding, Entities
from hf2triton.errors import Hf2TritonError

DEFAULT_TEXTS = [
    "Dynamic batching merges requests on the server.",
    "Each call is split into chunks of max_batch_size.",
    "Chunks are sent concurrently and results come back in order.",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("texts", nargs="*", help="texts to send (default: three example sentences)")
    parser.add_argument("--url", default="127.0.0.1:8001", help="host:port of the gRPC endpoint")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"ensemble name (default {DEFAULT_MODEL})")
    parser.add_argument("--copies", type=int, default=64, help="repeat the texts this many times per call")
    parser.add_argument("--calls", type=int, default=4, help="independent infer() calls run together")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per call")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the model to be ready")
    tls = parser.add_argument_group("TLS (https:// urls turn it on for HTTP)")
    tls.add_argument("--ssl", action="store_true", help="use TLS (gRPC)")
    tls.add_argument("--root-certificates", help="PEM file of the CAs to trust (default: the system's)")
    tls.add_argument("--private-key", help="PEM client key, for servers that verify clients")
    tls.add_argument("--certificate-chain", help="PEM client certificate, with --private-key")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    texts = (args.texts or DEFAULT_TEXTS) * args.copies
    try:
        async with AsyncClient(args.url, protocol="grpc", model=args.model, max_concurrency=args.concurrency,
                               ssl=args.ssl, root_certificates=args.root_certificates,
                               private_key=args.private_key, certificate_chain=args.certificate_chain) as client:
            info = await client.wait_for_model(timeout_s=args.wait)
            start = time.perf_counter()
            calls = await asyncio.gather(*(client.infer(texts) for _ in range(args.calls)))
            elapsed = time.perf_counter() - start
    except Hf2TritonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    total = sum(len(results) for results in calls)
    print(f"{info.name} ({info.task}): {total} texts in {elapsed:.2f} s = {total / elapsed:.1f} texts/s "
          f"({args.calls} calls, max_batch_size {info.max_batch_size}, concurrency {args.concurrency})")
    results = calls[0]
    for text, result in list(zip(texts, results))[: len(args.texts or DEFAULT_TEXTS)]:
        if isinstance(result, Classification):
            print(f"{result.label:>12}  {result.score:.3f}  {text!r}")
        elif isinstance(result, Embedding):
            print(f"dim={result.vector.shape[0]} truncated={result.truncated}  {text!r}")
        elif isinstance(result, Entities):
            spans = ", ".join(f"{e.label} {text[e.start:e.end]!r}" for e in result.entities)
            print(f"{len(result.entities)} entities [{spans}]  {text!r}")
    print(f"truncated texts: {sum(r.truncated for r in results)} of {len(results)} per call")
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
