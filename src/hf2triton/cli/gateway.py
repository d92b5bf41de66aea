"""``hf2triton gateway``: the OpenAI/TEI-compatible HTTP front for a running Triton.

The arguments and the run function live with the gateway (:mod:`hf2triton.gateway.command`);
building this parser imports only its settings (no tritonclient, no Starlette).
"""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    from hf2triton.gateway.command import DESCRIPTION, add_gateway_arguments, run_gateway_command

    parser = commands.add_parser("gateway", help="OpenAI/TEI-compatible HTTP front for a running Triton",
                                 description=DESCRIPTION)
    add_gateway_arguments(parser)
    parser.set_defaults(run=run_gateway_command)
