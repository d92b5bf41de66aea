"""``python -m hf2triton.gateway --triton-url HOST:PORT --port PORT``: the gateway alone.

The container image runs this entry point: it imports only the gateway's light
dependencies, not the export stack the full CLI may load.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hf2triton.errors import Hf2TritonError
from hf2triton.gateway.command import DESCRIPTION, add_gateway_arguments, run_gateway_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf2triton.gateway", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_gateway_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return run_gateway_command(args)
    except Hf2TritonError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
