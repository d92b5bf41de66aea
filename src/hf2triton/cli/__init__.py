"""``hf2triton`` command line: thin shells over the library, one module per command group.

Building the parser imports only light modules (option names, defaults and choices);
each command imports the heavy libraries it needs when it runs. Every user mistake ends
with one line on stderr and exit status 2: argparse's own errors and any
:class:`~hf2triton.errors.Hf2TritonError` the library raises.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

from hf2triton.cli import check, export, gateway, infer, perf, serve, verify
from hf2triton.errors import Hf2TritonError

USAGE_ERROR = 2  # argparse's status for a usage mistake; the CLI uses it for every user mistake
INTERRUPTED = 130
DESCRIPTION = "Hugging Face checkpoint → ONNX → Triton model repository → served, checked and measured."
# Command groups in the order `hf2triton --help` lists them.
COMMANDS = (export, serve, infer, verify, check, perf, gateway)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, like every other CLI error."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hf2triton", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMANDS:
        group.register(commands)
    return parser


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Checkpoints are local: never reach for a hub. Third-party chatter (weight-loading
    # progress bars, export warnings) is not the user's concern.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for noisy in ("transformers", "torch", "onnxruntime"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.run(args)
    except Hf2TritonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        return INTERRUPTED


def export_main(argv: list[str] | None = None) -> int:
    """``python build/export.py [CHECKPOINT] [options]``: the export subcommand alone."""
    return main(["export", *(sys.argv[1:] if argv is None else argv)])
