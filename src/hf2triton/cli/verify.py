"""``hf2triton verify``: a running deployment's answers against the checkpoint run in PyTorch."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf2triton.cli.infer import add_tls_arguments, tls_hint, tls_options
from hf2triton.cli.library import LibraryDefault
from hf2triton.contract import DEFAULT_MODEL_NAME, PROTOCOLS, local_url

TOLERANCE = "hf2triton.client.verify:Tolerance"
BOTH = "both"


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "verify", help="compare a running deployment's answers with the checkpoint run in PyTorch",
        description="Send texts to a served model over gRPC and HTTP and compare every answer with the "
        "checkpoint run through transformers (embeddings: cosine; classification: labels and scores; "
        "NER: entity spans, labels and scores; rerank: CrossEncoder scores; text pairs where the model "
        "takes them). Exits 1 on any mismatch.")
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME, help="served model name (default: %(default)s)")
    parser.add_argument("--grpc-url", default=local_url("grpc"), help="gRPC address (default: %(default)s)")
    parser.add_argument("--http-url", default=local_url("http"), help="HTTP address (default: %(default)s)")
    parser.add_argument("--protocol", choices=(BOTH, *PROTOCOLS), default=BOTH,
                        help="which endpoints to check (default: %(default)s)")
    parser.add_argument("--model-repository", type=Path,
                        help="the served repository: the checkpoint defaults to the one its MODEL/hf2triton.json records")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint to compare with (overrides the manifest's)")
    parser.add_argument("--texts", type=Path, help="file with one text per line (default: the built-in varied set)")
    parser.add_argument("--min-cosine", type=float, default=LibraryDefault(TOLERANCE, "min_cosine"),
                        help="embeddings (default: %(default)s)")
    parser.add_argument("--atol", type=float, default=LibraryDefault(TOLERANCE, "score_atol"),
                        help="max |served - reference| of probabilities and entity scores (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the model")
    add_tls_arguments(parser)
    parser.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    from hf2triton.cli.library import given
    from hf2triton.errors import OptionsError
    from hf2triton.export.parity import VERIFY_TEXTS
    from hf2triton.client.verify import Tolerance, checkpoint_from_manifest, read_texts, verify

    if args.checkpoint is not None:
        checkpoint = args.checkpoint
    elif args.model_repository is not None:
        checkpoint = checkpoint_from_manifest(args.model_repository, args.model)
    else:
        raise OptionsError("pass --checkpoint, or --model-repository to use the checkpoint recorded at export")
    protocols = PROTOCOLS if args.protocol == BOTH else (args.protocol,)
    urls = {p: args.grpc_url if p == "grpc" else args.http_url for p in protocols}
    texts = read_texts(args.texts) if args.texts else VERIFY_TEXTS
    tolerance = Tolerance(**given(args, "min_cosine", "atol", rename={"atol": "score_atol"}))
    tls = tls_options(args, *urls.values())
    with tls_hint(tls, *urls.values()):
        report = verify(args.model, checkpoint, urls, texts, tolerance, args.timeout, tls)
    print("\n".join(report.table()))
    print(report.summary())
    return 0 if report.passed else 1
