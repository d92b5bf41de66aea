"""``hf2triton serve``: the bundled CPU tritonserver on 127.0.0.1 until Ctrl-C.

Thin on purpose: ``ServerConfig`` owns the defaults and validates every flag, ``serve``
owns the loop (signals, health watch, restarts).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from hf2triton.cli.library import LibraryDefault, given
from hf2triton.contract import DEFAULT_REPOSITORY
from hf2triton.errors import OptionsError
from hf2triton.serving.config import ADMIN_KEY_ENV, MODEL_CONTROL_MODES

CONFIG = "hf2triton.serving.config:ServerConfig"
POLICY = "hf2triton.serving.watch:SupervisionPolicy"
# gRPC TLS flags, named as tritonserver names them (its HTTP endpoint has no TLS in 2.51).
TLS_FIELDS = ("grpc_use_ssl", "grpc_use_ssl_mutual", "grpc_server_cert", "grpc_server_key", "grpc_root_cert")
CONFIG_FIELDS = ("http_port", "grpc_port", "metrics_port", "log_file", "log_verbose", "model_control_mode",
                 "repository_poll_secs", "allow_unauthenticated_model_control", *TLS_FIELDS)
# Supervision flags → SupervisionPolicy fields.
POLICY_FIELDS = {"max_restarts": "max_restarts", "restart_backoff": "backoff_s",
                 "restart_backoff_max": "backoff_max_s", "restart_reset": "stable_s"}


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("serve", help="run the bundled CPU tritonserver on 127.0.0.1 until Ctrl-C")
    add_server_arguments(parser)
    add_supervision_arguments(parser)
    add_gateway_port_argument(parser)
    parser.set_defaults(run=run_serve)

    health = commands.add_parser(
        "health", help="exit 0 when the local server is live, ready and no python-backend stub is dead",
        description="Liveness check for health checks and probes: asks the server at --url whether it is live "
        "and ready, and looks (in /proc, so run it where the server runs) for every stub its loaded python-backend "
        "models need. Exits 1 with the reason otherwise.")
    from hf2triton.serving.health import add_health_arguments

    add_health_arguments(health)
    health.set_defaults(run=run_health)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", type=Path, default=Path(DEFAULT_REPOSITORY),
                        help="repository to serve (default: %(default)s)")
    parser.add_argument("--http-port", type=int, default=LibraryDefault(CONFIG, "http_port"),
                        help="0 picks a free port (default: %(default)s)")
    parser.add_argument("--grpc-port", type=int, default=LibraryDefault(CONFIG, "grpc_port"),
                        help="(default: %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=LibraryDefault(CONFIG, "metrics_port"),
                        help="(default: %(default)s)")
    parser.add_argument("--log-file", type=Path, default=LibraryDefault(CONFIG, "log_file"),
                        help="file the server log is streamed to (default: a new /tmp/tritonserver-*.log, "
                        "printed at start)")
    parser.add_argument("--log-verbose", type=int, default=LibraryDefault(CONFIG, "log_verbose"),
                        help="tritonserver verbosity level (default: %(default)s)")
    parser.add_argument("--model-control-mode", choices=MODEL_CONTROL_MODES,
                        default=LibraryDefault(CONFIG, "model_control_mode"),
                        help="poll: pick up new model versions from the repository; explicit: load/unload "
                        "through the (restricted) repository API (default: %(default)s)")
    parser.add_argument("--repository-poll-secs", type=int, default=LibraryDefault(CONFIG, "repository_poll_secs"),
                        help="poll interval with --model-control-mode poll")
    parser.add_argument("--admin-key-env", default=ADMIN_KEY_ENV, metavar="VAR",
                        help="when this environment variable is set, model control and the repository, "
                        "shared-memory, trace and logging APIs need its value in the header 'admin-key' "
                        "(default: %(default)s)")
    parser.add_argument("--allow-unauthenticated-model-control", action="store_true",
                        default=LibraryDefault(CONFIG, "allow_unauthenticated_model_control"),
                        help="allow --model-control-mode explicit without an admin key (anyone who reaches "
                        "the server can then load and unload models)")
    add_tls_arguments(parser)


def add_tls_arguments(parser: argparse.ArgumentParser) -> None:
    tls = parser.add_argument_group("gRPC TLS", "tritonserver's own flags; HTTP and metrics stay plain on the "
                                    "loopback address (the bundled server has no HTTPS)")
    tls.add_argument("--grpc-use-ssl", action="store_true", default=LibraryDefault(CONFIG, "grpc_use_ssl"),
                     help="serve gRPC over TLS (needs --grpc-server-cert and --grpc-server-key)")
    tls.add_argument("--grpc-use-ssl-mutual", action="store_true",
                     default=LibraryDefault(CONFIG, "grpc_use_ssl_mutual"),
                     help="gRPC TLS that also demands a client certificate signed by --grpc-root-cert")
    tls.add_argument("--grpc-server-cert", type=Path, default=LibraryDefault(CONFIG, "grpc_server_cert"),
                     metavar="PEM", help="the server's certificate")
    tls.add_argument("--grpc-server-key", type=Path, default=LibraryDefault(CONFIG, "grpc_server_key"),
                     metavar="PEM", help="the server's private key")
    tls.add_argument("--grpc-root-cert", type=Path, default=LibraryDefault(CONFIG, "grpc_root_cert"),
                     metavar="PEM", help="the CA that signs client certificates (with --grpc-use-ssl-mutual)")


def add_gateway_port_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway-port", type=int, default=None, metavar="PORT",
                        help="also run the OpenAI/TEI-compatible gateway (hf2triton gateway) on 127.0.0.1:PORT "
                        "(0 picks a free port)")


def add_supervision_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-health-watch", dest="health_watch", action="store_false",
                        help="do not restart the server when a python-backend stub process dies")
    parser.add_argument("--max-restarts", type=int, default=LibraryDefault(POLICY, "max_restarts"),
                        help="restarts in a row before giving up with exit status 1 (default: %(default)s)")
    parser.add_argument("--restart-backoff", type=float, default=LibraryDefault(POLICY, "backoff_s"),
                        metavar="SECONDS",
                        help="wait before the first restart in a row, doubled for each next one (default: %(default)s)")
    parser.add_argument("--restart-backoff-max", type=float, default=LibraryDefault(POLICY, "backoff_max_s"),
                        metavar="SECONDS", help="longest wait between restarts (default: %(default)s)")
    parser.add_argument("--restart-reset", type=float, default=LibraryDefault(POLICY, "stable_s"),
                        metavar="SECONDS",
                        help="healthy this long after a restart, the count of restarts in a row starts again "
                        "(default: %(default)s)")


def server_config(args: argparse.Namespace):
    """ServerConfig from the flags the user set (it validates them: OptionsError)."""
    from hf2triton.serving import ServerConfig

    values = given(args, *CONFIG_FIELDS)
    return ServerConfig(
        model_repository=args.model_repository.resolve(),
        load_models=("*",) if values.get("model_control_mode") == "explicit" else (),
        restricted_api_key=os.environ.get(args.admin_key_env) or None,
        **values,
    )


def supervision_policy(args: argparse.Namespace):
    """SupervisionPolicy from the supervision flags the user set (it validates them: OptionsError)."""
    from hf2triton.serving import SupervisionPolicy

    return SupervisionPolicy(**given(args, *POLICY_FIELDS, rename=POLICY_FIELDS))


def run_serve(args: argparse.Namespace) -> int:
    from hf2triton.repository import recover_repository
    from hf2triton.serving import serve

    config = server_config(args)  # flag mistakes before the repository check
    policy = supervision_policy(args)
    companion = gateway_beside(args, config)
    if not args.model_repository.is_dir():
        raise OptionsError(f"model repository {args.model_repository} does not exist; "
                           "run `python build/export.py` first")
    # An export killed mid-install leaves a journal: finish or roll it back before Triton reads the folder.
    recover_repository(args.model_repository)
    return serve(config, health_watch=args.health_watch, policy=policy, companion=companion)


def gateway_beside(args: argparse.Namespace, config):
    """The gateway of ``--gateway-port`` (None without it); the entry point wires it, so serving
    never imports the gateway."""
    if args.gateway_port is None:
        return None
    if not 0 <= args.gateway_port <= 65535:
        raise OptionsError(f"--gateway-port must be in 0..65535, got {args.gateway_port}")
    from hf2triton.gateway.run import GatewayBeside, check_gateway_beside

    check_gateway_beside(config)
    return GatewayBeside(args.gateway_port)


def run_health(args: argparse.Namespace) -> int:
    from hf2triton.serving.health import run_health as check_and_print

    return check_and_print(args)
