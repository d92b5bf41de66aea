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
from hf2triton.server import MODEL_CONTROL_MODES

CONFIG = "hf2triton.server:ServerConfig"
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"  # the same variable docker-compose.yml reads
CONFIG_FIELDS = ("http_port", "grpc_port", "metrics_port", "log_file", "log_verbose", "model_control_mode",
                 "repository_poll_secs")


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("serve", help="run the bundled CPU tritonserver on 127.0.0.1 until Ctrl-C")
    add_server_arguments(parser)
    parser.add_argument("--no-health-watch", dest="health_watch", action="store_false",
                        help="do not restart the server when a python-backend stub process dies")
    parser.set_defaults(run=run_serve)


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


def server_config(args: argparse.Namespace):
    """ServerConfig from the flags the user set (it validates them: OptionsError)."""
    from hf2triton.server import ServerConfig

    values = given(args, *CONFIG_FIELDS)
    return ServerConfig(
        model_repository=args.model_repository.resolve(),
        load_models=("*",) if values.get("model_control_mode") == "explicit" else (),
        restricted_api_key=os.environ.get(args.admin_key_env) or None,
        **values,
    )


def run_serve(args: argparse.Namespace) -> int:
    from hf2triton.server import serve

    config = server_config(args)  # flag mistakes before the repository check
    if not args.model_repository.is_dir():
        raise OptionsError(f"model repository {args.model_repository} does not exist; "
                           "run `python build/export.py` first")
    return serve(config, health_watch=args.health_watch)
