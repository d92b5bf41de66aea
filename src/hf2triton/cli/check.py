"""``hf2triton check``: refuse TensorRT plans built for another TensorRT, GPU or Triton release."""

from __future__ import annotations

import argparse
from pathlib import Path

from hf2triton.contract import DEFAULT_REPOSITORY


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("check", help="refuse TensorRT plans built for another TensorRT, GPU or release",
                                 description="Compare the TensorRT version, GPU compute capability and Triton "
                                 "release recorded next to each plan (<plan>.json) with this machine and the "
                                 "pinned release.")
    parser.add_argument("--model-repository", type=Path, default=Path(DEFAULT_REPOSITORY),
                        help="(default: %(default)s)")
    parser.add_argument("--release", help="pinned Triton release, e.g. 25.01 (default: $TRITON_VERSION, the "
                        "container's release, or TRITON_VERSION in ./.env)")
    parser.add_argument("--offline", action="store_true",
                        help="no GPU/TensorRT here: check the plans against the pinned release only")
    parser.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    from hf2triton.engines.check import check_repository, find_plans
    from hf2triton.engines.environment import detect_environment, pinned_release

    if args.model_repository.is_dir() and not find_plans(args.model_repository):
        print(f"no TensorRT plans in {args.model_repository}: nothing to check")
        return 0
    release = args.release or pinned_release()
    environment = None if args.offline else detect_environment()
    print(check_repository(args.model_repository, environment, release).summary())
    return 0
