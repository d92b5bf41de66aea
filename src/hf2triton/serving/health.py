"""``hf2triton health``: a liveness check that also sees dead python-backend stubs.

``/v2/health/ready`` stays 200 while a dead stub fails every request to its model
(Triton 2.51 does not restart stubs), so container health checks and Kubernetes probes
that ask only Triton answer "healthy" for a broken server. This check asks Triton (live,
ready), then compares the instances every loaded python-backend model version should run
(its config's instance groups, read through the open model-config API) with the stub
processes of the server in /proc. It runs where the server's processes are visible: on
the same machine, or inside the same container (``docker compose`` health check,
Kubernetes exec probe). It is stateless: no admin key is needed (it reads only open APIs).

``python3 -m hf2triton.serving.health`` is the same check without the CLI: it imports the
standard library only, so it runs in the Triton image, where hf2triton is installed
without its export dependencies, and starts fast enough for a probe every few seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from hf2triton.contract import local_url
from hf2triton.serving.process import http_request
from hf2triton.serving.watch import python_stubs

__all__ = ["HealthReport", "add_health_arguments", "check_health", "main", "run_health", "server_pid_listening_on"]

logger = logging.getLogger(__name__)

_CONFIRM_S = 1.0  # a stub found missing is looked for again after this long (hot reloads swap stubs)


@dataclass(frozen=True)
class HealthReport:
    """The answer of one health check: ``reason`` says what is wrong, or what was checked."""

    healthy: bool
    reason: str


def check_health(url: str = local_url("http"), timeout_s: float = 5.0, server_pid: int | None = None) -> HealthReport:
    """Whether the tritonserver at ``url`` (``host:port`` of its HTTP endpoint) is live, ready,
    and runs every python-backend stub its loaded models need.

    ``server_pid`` defaults to the process listening on the port of ``url``.
    """
    base = url if url.startswith(("http://", "https://")) else f"http://{url}"
    for what in ("live", "ready"):
        try:
            status, _ = http_request(f"{base}/v2/health/{what}", timeout_s=timeout_s)
        except (OSError, urllib.error.URLError) as error:
            return HealthReport(False, f"tritonserver at {base} does not answer: {error}")
        if status != 200:
            return HealthReport(False, f"tritonserver at {base} is not {what} (HTTP {status} from /v2/health/{what})")
    port = int(base.rsplit(":", 1)[1].split("/")[0])
    pid = server_pid if server_pid is not None else server_pid_listening_on(port)
    if pid is None:
        return HealthReport(False, f"cannot find the tritonserver process listening on port {port} to check its stubs")
    try:
        expected = _expected_stubs(base, timeout_s)
    except (OSError, urllib.error.URLError, ValueError, KeyError) as error:
        return HealthReport(False, f"cannot read the loaded models from {base}: {error}")
    missing = _missing(expected, pid)
    if missing:
        time.sleep(_CONFIRM_S)
        missing = _missing(expected, pid) & missing
    if missing:
        names = ", ".join(f"{m} version {v} instance {i}" for m, v, i in sorted(missing))
        return HealthReport(False, f"python-backend stub(s) dead: {names}; requests to those models fail until "
                            "tritonserver restarts")
    return HealthReport(True, f"tritonserver (pid {pid}) is live and ready; {sum(expected.values())} "
                        "python-backend stub(s) running")


def _missing(expected: Counter[tuple[str, str, str]], pid: int) -> set[tuple[str, str, str]]:
    running = Counter(stub.key for stub in python_stubs(pid))
    return set(expected - running)


def _expected_stubs(base: str, timeout_s: float) -> Counter[tuple[str, str, str]]:
    """(model, version, instance) of every stub the loaded python-backend model versions run.

    Triton names a group's instances ``<group name>_<k>`` for k < count, the same name on
    each GPU of a KIND_GPU group: hence a count per name.
    """
    expected: Counter[tuple[str, str, str]] = Counter()
    for model, version in _loaded_versions(base, timeout_s):
        status, body = http_request(
            f"{base}/v2/models/{quote(model)}/versions/{quote(version)}/config", timeout_s=timeout_s
        )
        if status != 200:
            continue  # unloaded between the two requests
        config = json.loads(body)
        if config.get("backend") != "python":
            continue
        for group in config.get("instance_group", []):
            copies = len(group.get("gpus", [])) if group.get("kind") == "KIND_GPU" else 1
            for k in range(int(group.get("count", 1))):
                expected[(model, version, f"{group['name']}_{k}")] += max(copies, 1)
    return expected


def _loaded_versions(base: str, timeout_s: float) -> list[tuple[str, str]]:
    """Model versions the server has loaded, from the open statistics API (no admin key)."""
    status, body = http_request(f"{base}/v2/models/stats", timeout_s=timeout_s)
    if status != 200:
        raise ValueError(f"HTTP {status} from /v2/models/stats: {body[:200]!r}")
    stats = json.loads(body).get("model_stats", [])
    return [(entry["name"], str(entry["version"])) for entry in stats]


def server_pid_listening_on(port: int) -> int | None:
    """The pid of the process listening on TCP ``port`` (from /proc; None when not visible)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if str(fd.readlink()) in inodes:
                    return int(entry.name)
            except OSError:
                continue
    return None


def add_health_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``hf2triton health`` (and ``python -m hf2triton.serving.health``)."""
    parser.add_argument("--url", default=local_url("http"), help="host:port of the HTTP endpoint (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default: %(default)s)")
    parser.add_argument("--pid", type=int, help="the tritonserver's pid (default: the process listening on the port)")


def run_health(args: argparse.Namespace) -> int:
    """Check, print one line (stdout when healthy, stderr otherwise), return the exit status."""
    report = check_health(args.url, timeout_s=args.timeout, server_pid=args.pid)
    if report.healthy:
        sys.stdout.write(f"healthy: {report.reason}\n")
        return 0
    sys.stderr.write(f"unhealthy: {report.reason}\n")
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hf2triton.serving.health", description=__doc__.split("\n\n")[0])
    add_health_arguments(parser)
    return run_health(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
