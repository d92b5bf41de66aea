"""The one health loop: watch a running tritonserver, restart it when a python-backend stub
dies, with exponential backoff and a cap.

Triton 2.51 does not restart a dead stub: every request to that model then fails with
"Stub process '...' is not healthy" while the server still reports ready (measured). The
only cure is a server restart. A request that kills its stub every time would turn that
cure into a restart loop, so restarts back off (``backoff_s``, doubling up to
``backoff_max_s``) and stop after ``max_restarts`` in a row: the loop then ends with a
non-zero status and the reason. A server that stays healthy for ``stable_s`` starts the
count again.

tritonserver itself dying of a crash signal (abort, segfault, the kernel's OOM kill) is
restarted the same way, under the same cap: a stub killed while it holds the python
backend's shared-memory mutex makes tritonserver abort (boost ``lock_exception``, seen when
a test killed a stub under load). Any other exit of the server ends the loop.

A restart stops the broken server first, waits out the backoff, then starts again on the
same ports (clients keep their addresses). When one of those ports is taken meanwhile, a
port first asked for as 0 is picked afresh; a port asked for by number is waited for
(the next attempt comes after the next backoff). Every wait polls ``should_stop`` so a
Ctrl-C is honoured within a fraction of a second in every state.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hf2triton.errors import OptionsError, ServerError
from hf2triton.serving.process import LocalTritonServer, read_tail, repository_index

__all__ = [
    "StubProcess",
    "StubWatch",
    "SupervisionPolicy",
    "SupervisionResult",
    "python_stubs",
    "supervise",
    "watch_and_restart",
]

logger = logging.getLogger(__name__)

_STOP_POLL_S = 0.1  # how often a wait looks at should_stop
_RESTART_DRAIN_S = 1.0  # a server with a dead stub gets this long to finish other requests


@dataclass(frozen=True)
class StubProcess:
    """A python-backend stub: the process that runs one instance of a python model."""

    pid: int
    model: str
    version: str
    instance: str  # e.g. NAME_model_0_0

    @property
    def key(self) -> tuple[str, str, str]:
        return self.model, self.version, self.instance


def python_stubs(server_pid: int) -> list[StubProcess]:
    """The live python-backend stubs of the tritonserver ``server_pid`` (from /proc).

    A stub's argv is: binary, ``<repository>/<model>/<version>/model.py``, shm region,
    two sizes, the server's pid, the backend folder, an IPC id, the instance name, ...
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if len(argv) > 8 and argv[0].endswith("triton_python_backend_stub") and argv[5] == str(server_pid):
            model_py = Path(argv[1])
            found.append(StubProcess(int(entry.name), model_py.parent.parent.name, model_py.parent.name, argv[8]))
    return found


class StubWatch:
    """Finds python-backend stubs that died while their model version is still loaded.

    A stub counts as dead once it has been missing for ``confirm_s`` while the repository
    index still lists its model version READY. Stubs stopped on purpose do not count:
    when a version is unloaded (hot reload) its stubs exit a moment before the index
    stops listing it READY (over half a second was seen on a busy machine), and a
    version reloaded in place gets a new stub under the same name.
    """

    def __init__(self, server: LocalTritonServer, confirm_s: float = 3.0) -> None:
        self._server = server
        self._confirm_s = confirm_s
        self._known: set[tuple[str, str, str]] = set()
        self._missing_since: dict[tuple[str, str, str], float] = {}

    def check(self) -> list[str]:
        """Names (``model`` version ``v`` instance ``i``) of stubs confirmed dead since the last check."""
        pid = self._server.pid
        if pid is None:
            return []
        # The python backend also runs a short-lived stub per model (named after the model,
        # for config auto-completion) while loading it: only instance stubs are watched.
        current = {stub.key for stub in python_stubs(pid) if stub.instance != stub.model}
        try:
            ready = {(m["name"], m.get("version", "")) for m in repository_index(self._server) if m.get("state") == "READY"}
        except (ServerError, OSError, ValueError):
            return []  # the server is busy or going down; look again next time
        now = time.monotonic()
        missing = {key for key in self._known - current if key[:2] in ready}
        self._missing_since = {key: self._missing_since.get(key, now) for key in missing}
        dead = sorted(key for key, since in self._missing_since.items() if now - since >= self._confirm_s)
        for key in dead:
            del self._missing_since[key]
        self._known = current | set(self._missing_since)
        return [f"{model} version {version} instance {instance}" for model, version, instance in dead]

    def reset(self) -> None:
        """Forget what was seen (after a restart the stubs are new)."""
        self._known, self._missing_since = set(), {}


@dataclass(frozen=True)
class SupervisionPolicy:
    """How the health loop watches and restarts (times in seconds)."""

    interval_s: float = 1.0  # between health checks
    confirm_s: float = 3.0  # a stub missing this long is dead (see StubWatch)
    backoff_s: float = 1.0  # wait before the first restart in a row; doubles for each next one
    backoff_max_s: float = 30.0  # the longest wait between restarts
    max_restarts: int = 5  # restarts in a row before giving up
    stable_s: float = 60.0  # healthy this long after a restart: the next failure is first in a row again
    ready_timeout_s: float = 120.0  # each restart's start-up

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be > 0, not {getattr(self, name)}"
            for name in ("interval_s", "ready_timeout_s")
            if getattr(self, name) <= 0
        ]
        problems += [
            f"{name} must be >= 0, not {getattr(self, name)}"
            for name in ("confirm_s", "backoff_s", "backoff_max_s", "stable_s", "max_restarts")
            if getattr(self, name) < 0
        ]
        if self.backoff_max_s < self.backoff_s:
            problems.append(f"backoff_max_s ({self.backoff_max_s:g}) must be >= backoff_s ({self.backoff_s:g})")
        if problems:
            raise OptionsError("invalid restart settings: " + "; ".join(problems))

    def delay(self, attempt: int) -> float:
        """The wait before restart ``attempt`` (1-based) of a row."""
        return min(self.backoff_s * 2 ** (attempt - 1), self.backoff_max_s)


# Deaths that are crashes (or the OOM killer), not someone stopping the server: restarted.
CRASH_SIGNALS = frozenset({signal.SIGABRT, signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE,
                           signal.SIGKILL})


def crash_signal(returncode: int | None) -> signal.Signals | None:
    """The crash signal a process died of (``returncode`` -N), else None."""
    if returncode is None or returncode >= 0 or -returncode not in CRASH_SIGNALS:
        return None
    return signal.Signals(-returncode)


@dataclass(frozen=True)
class SupervisionResult:
    """How the health loop ended: ``exit_status`` 0 when asked to stop."""

    exit_status: int
    reason: str
    restarts: int


def supervise(
    server: LocalTritonServer,
    policy: SupervisionPolicy | None,
    should_stop: Callable[[], bool],
    on_ready: Callable[[LocalTritonServer], None] | None = None,
) -> SupervisionResult:
    """Watch a started ``server`` until ``should_stop()``, it exits by itself, or restarts give up.

    With ``policy`` None the stubs are not watched (the server's exit still ends the loop).
    ``on_ready`` runs once the watch knows the running stubs, at the start and after each
    successful restart (e.g. to log the endpoints and "ready"): a stub that dies after it
    ran is noticed.
    """
    watch = StubWatch(server, policy.confirm_s) if policy is not None else None
    interval = policy.interval_s if policy is not None else 1.0
    restarts, in_a_row, healthy_since = 0, 0, time.monotonic()
    _prime(watch, server, on_ready)
    while True:
        if _wait(interval, should_stop):
            return SupervisionResult(0, "stop requested", restarts)
        code = server.returncode
        crash = crash_signal(code) if watch is not None else None  # restarted only under a watch
        if code is not None and crash is None:
            tail = read_tail(server.log_path).rstrip()
            reason = f"tritonserver exited by itself with status {code}; last lines of {server.log_path}:\n{tail}"
            return SupervisionResult(128 - code if code < 0 else (code or 1), reason, restarts)  # signal N: 128 + N
        if watch is None or policy is None:
            continue
        if crash is not None:
            cause = f"tritonserver died of {crash.name}"
            logger.error("%s; last lines of %s:\n%s\nhf2triton restarts tritonserver on the same ports", cause,
                         server.log_path, read_tail(server.log_path).rstrip())
        else:
            dead = watch.check()
            if not dead:
                if in_a_row and time.monotonic() - healthy_since >= policy.stable_s:
                    logger.info("tritonserver healthy for %g s; the restart count starts again", policy.stable_s)
                    in_a_row = 0
                continue
            cause = f"python-backend stub(s) died: {', '.join(dead)}"
            logger.error(
                "%s. Triton does not restart them (every request to that model fails while the server still "
                "reports ready), so hf2triton restarts tritonserver on the same ports",
                cause,
            )
        outcome = _restart(server, policy, should_stop, in_a_row, cause)
        restarts += outcome.attempts
        in_a_row += outcome.attempts
        if outcome.result is not None:
            return SupervisionResult(outcome.result.exit_status, outcome.result.reason, restarts)
        watch.reset()
        healthy_since = time.monotonic()
        _prime(watch, server, on_ready)


def _prime(watch: StubWatch | None, server: LocalTritonServer, on_ready: Callable[[LocalTritonServer], None] | None) -> None:
    """Let ``watch`` see the stubs of a freshly started server, then tell ``on_ready``."""
    if watch is not None:
        watch.check()
    if on_ready is not None:
        on_ready(server)


@dataclass(frozen=True)
class _RestartOutcome:
    attempts: int
    result: SupervisionResult | None  # None: the server is running again


def _restart(
    server: LocalTritonServer,
    policy: SupervisionPolicy,
    should_stop: Callable[[], bool],
    in_a_row: int,
    cause: str,
) -> _RestartOutcome:
    """Stop the broken server, then start it again after a backoff, until it runs or the cap is hit."""
    server.stop(timeout_s=_RESTART_DRAIN_S, term_timeout_s=0.5)
    attempts, repick, last_error = 0, False, cause
    while True:
        if in_a_row + attempts >= policy.max_restarts:
            reason = (
                f"giving up after {in_a_row + attempts} restart(s) in a row (--max-restarts {policy.max_restarts}); "
                f"last problem: {last_error}"
            )
            return _RestartOutcome(attempts, SupervisionResult(1, reason, attempts))
        attempts += 1
        delay = policy.delay(in_a_row + attempts)
        logger.warning(
            "restarting tritonserver in %.1f s (restart %d in a row, at most %d)",
            delay,
            in_a_row + attempts,
            policy.max_restarts,
        )
        if _wait(delay, should_stop):
            return _RestartOutcome(attempts - 1, SupervisionResult(0, "stop requested while backing off", attempts - 1))
        started = time.monotonic()
        try:
            server.restart(policy.ready_timeout_s, _RESTART_DRAIN_S, cancel=should_stop, repick_ports=repick)
        except ServerError as error:
            if should_stop():
                return _RestartOutcome(attempts, SupervisionResult(0, "stop requested while restarting", attempts))
            last_error = str(error).splitlines()[0]
            busy = server.ports_in_use()
            repick = bool(busy) and server.can_repick_ports
            if busy:
                logger.warning(
                    "port(s) %s taken while restarting; %s",
                    ", ".join(busy),
                    "picking other free ports" if repick else "waiting for them",
                )
            logger.warning("restart %d failed: %s", in_a_row + attempts, last_error)
            continue
        logger.warning("tritonserver restarted: ready again after %.1f s", time.monotonic() - started)
        return _RestartOutcome(attempts, None)


def _wait(seconds: float, should_stop: Callable[[], bool]) -> bool:
    """Sleep ``seconds`` in short slices; True as soon as ``should_stop()`` is."""
    deadline = time.monotonic() + seconds
    while not should_stop():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(_STOP_POLL_S, remaining))
    return True


def watch_and_restart(server: LocalTritonServer, stop: threading.Event, interval_s: float = 1.0) -> int:
    """Health-watch ``server`` every ``interval_s`` until ``stop`` is set; return the number of restarts.

    For a watch on a thread of its own (tests, embedding applications); ``hf2triton serve``
    runs the same loop (:func:`supervise`) on its main thread.
    """
    result = supervise(server, SupervisionPolicy(interval_s=interval_s), stop.is_set)
    if result.exit_status != 0:
        logger.error("health watch ended: %s", result.reason)
    return result.restarts
