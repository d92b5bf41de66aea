"""The ``hf2triton gateway`` subcommand: arguments and the run function the CLI calls."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf2triton.gateway.settings import ADMIN_KEY_ENV, API_KEY_ENV, GatewaySettings

DESCRIPTION = ("Serve OpenAI-compatible /v1/embeddings, /v1/models, /v1/rerank and TEI-compatible /embed, "
               "/predict, /rerank in front of a running Triton (gRPC), plus /health and /metrics.")


def add_gateway_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = GatewaySettings()
    parser.add_argument("--triton-url", default=defaults.triton_url, metavar="HOST:GRPC_PORT",
                        help="Triton's gRPC address (default: %(default)s)")
    parser.add_argument("--host", default=defaults.host, help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=defaults.port, help="HTTP port (default: %(default)s)")
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="the repository Triton serves, when it is on this machine: usage token counts then "
                        "use each model's own tokenizer.json (otherwise its tokenizer step on Triton)")
    parser.add_argument("--default-model", default=None,
                        help="model for TEI routes (/embed, /predict, /rerank) that name none, when several "
                        "of the route's task are served")
    parser.add_argument("--api-key-env", default=API_KEY_ENV, metavar="VAR",
                        help="when this environment variable is set, requests need 'Authorization: Bearer "
                        "<its value>' (default: %(default)s)")
    parser.add_argument("--admin-key-env", default=ADMIN_KEY_ENV, metavar="VAR",
                        help="Triton's restricted-API key, needed to list its models when set "
                        "(default: %(default)s)")
    parser.add_argument("--max-inputs", type=int, default=defaults.max_inputs,
                        help="texts per request (default: %(default)s)")
    parser.add_argument("--max-request-bytes", type=int, default=defaults.max_request_bytes,
                        help="request body size limit (default: %(default)s)")
    parser.add_argument("--refresh-interval", type=float, default=defaults.refresh_interval_s, metavar="SECONDS",
                        help="how often to rediscover served models (default: %(default)s)")
    tls = parser.add_argument_group("TLS to Triton", "gRPC TLS, for a Triton started with --grpc-use-ssl")
    tls.add_argument("--triton-ssl", action="store_true", help="connect to Triton's gRPC endpoint over TLS")
    tls.add_argument("--triton-root-certificates", type=Path, metavar="PEM",
                     help="CA certificates that sign Triton's certificate (default: the system's trust store)")
    tls.add_argument("--triton-private-key", type=Path, metavar="PEM",
                     help="client key, for a Triton that demands client certificates (with --triton-certificate-chain)")
    tls.add_argument("--triton-certificate-chain", type=Path, metavar="PEM", help="client certificate")


def settings_from_arguments(args: argparse.Namespace) -> GatewaySettings:
    return GatewaySettings.from_environment(
        api_key_env=args.api_key_env, admin_key_env=args.admin_key_env,
        triton_url=args.triton_url, host=args.host, port=args.port, model_repository=args.model_repository,
        default_model=args.default_model, max_inputs=args.max_inputs, max_request_bytes=args.max_request_bytes,
        refresh_interval_s=args.refresh_interval, triton_ssl=args.triton_ssl,
        triton_root_certificates=args.triton_root_certificates, triton_private_key=args.triton_private_key,
        triton_certificate_chain=args.triton_certificate_chain,
    )


def run_gateway_command(args: argparse.Namespace) -> int:
    from hf2triton.gateway.run import run_gateway

    return run_gateway(settings_from_arguments(args))
