"""Server supervision against the real bundled tritonserver: ``hf2triton serve`` restarts after
dead python-backend stubs with backoff and a cap, survives a port taken during a restart, honours
Ctrl-C within 5 s in every state, refuses unauthenticated explicit model control, and
``hf2triton health`` sees a dead stub that ``/v2/health/ready`` does not."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from hf2triton.serving import LocalTritonServer, ServerConfig, check_health, free_port
from stubs import stubs_of
from test_server import ECHO_MODEL_PY, _processes_mentioning, _write_model

pytestmark = pytest.mark.e2e
SRC = Path(__file__).resolve().parents[1] / "src"
CTRL_C_LIMIT_S = 5.0
# Short backoff settings so a test sees several restarts in seconds.
FAST_RESTARTS = ["--restart-backoff", "0.5", "--restart-backoff-max", "1", "--restart-reset", "600"]


def cli_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    env.pop("TRITON_ADMIN_KEY", None)
    return env


class Serve:
    """``hf2triton serve`` as an operator runs it, its log lines timestamped as they arrive."""

    def __init__(self, repository: Path, *options: str, ports: dict[str, int] | None = None) -> None:
        ports = ports or {"http": 0, "grpc": 0, "metrics": 0}
        command = [sys.executable, "-m", "hf2triton.cli", "serve", "--model-repository", str(repository),
                   "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
                   "--metrics-port", str(ports["metrics"]), *options]
        self.repository = repository
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                        env=cli_env())
        self.lines: list[tuple[float, str]] = []
        self._queue: queue.Queue[tuple[float, str]] = queue.Queue()
        assert self.process.stderr is not None
        stream = self.process.stderr
        threading.Thread(target=lambda: [self._queue.put((time.monotonic(), line)) for line in stream],
                         daemon=True).start()

    def _drain(self, timeout_s: float) -> None:
        try:
            self.lines.append(self._queue.get(timeout=timeout_s))
        except queue.Empty:
            pass
        while not self._queue.empty():
            self.lines.append(self._queue.get_nowait())

    def wait_for(self, text: str, count: int = 1, timeout_s: float = 90) -> float:
        """The arrival time of the ``count``-th line containing ``text``."""
        deadline = time.monotonic() + timeout_s
        while True:
            hits = [at for at, line in self.lines if text in line]
            if len(hits) >= count:
                return hits[count - 1]
            assert self.process.poll() is None or not self._queue.empty(), (
                f"serve exited ({self.process.returncode}) before {count} × {text!r}:\n{self.log()}")
            assert time.monotonic() < deadline, f"no {count} × {text!r} within {timeout_s} s:\n{self.log()}"
            self._drain(0.2)

    def exit_status(self, timeout_s: float) -> int:
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._drain(0.5)
            pytest.fail(f"serve did not exit within {timeout_s} s:\n{self.log()}")
        time.sleep(0.2)
        self._drain(0.1)
        return code

    def log(self) -> str:
        return "".join(line for _, line in self.lines)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def kill_stubs(repository: Path, model: str = "echo") -> None:
    deadline = time.monotonic() + 30
    while not (victims := stubs_of(repository, model)):
        assert time.monotonic() < deadline, f"no stub of {model} found"
        time.sleep(0.2)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def echo_repository(tmp_path: Path) -> Path:
    repository = tmp_path / "model_repository"
    _write_model(repository, "echo", ECHO_MODEL_PY)
    return repository


def slow_reload_model(marker: Path, seconds: int = 120) -> str:
    """A python model whose second and later loads hang in initialize (the first creates ``marker``)."""
    return textwrap.dedent(
        f"""
        import time
        from pathlib import Path

        MARKER = Path({str(marker)!r})


        class TritonPythonModel:
            def initialize(self, args):
                if MARKER.exists():
                    time.sleep({seconds})
                MARKER.touch()

            def execute(self, requests):
                return []
        """
    )


# --------------------------------------------------------------------------- hf2triton health


def health(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hf2triton.cli", "health", "--url", url],
                          capture_output=True, text=True, env=cli_env(), timeout=60)


def test_health_is_green_on_a_healthy_server_and_red_after_a_stub_dies(echo_repository, tmp_path):
    config = ServerConfig(echo_repository, http_port=0, grpc_port=0, metrics_port=0, log_file=tmp_path / "t.log")
    with LocalTritonServer(config) as server:
        green = health(server.http_url)
        assert green.returncode == 0, green.stderr
        assert f"pid {server.pid}" in green.stdout and "1 python-backend stub(s) running" in green.stdout
        kill_stubs(echo_repository)
        time.sleep(0.5)
        red = health(server.http_url)
        assert red.returncode == 1, red.stdout
        assert "unhealthy: python-backend stub(s) dead: echo version 1 instance echo_0_0" in red.stderr
        report = check_health(server.http_url)  # Triton itself still says ready: only the stub check sees it
        assert not report.healthy and "echo" in report.reason
        assert check_health(server.http_url, server_pid=server.pid).healthy is False
    stopped = health(server.http_url)
    assert stopped.returncode == 1 and "does not answer" in stopped.stderr


# --------------------------------------------------------------------------- restarts


def test_repeated_stub_kills_back_off_then_give_up_with_the_reason(echo_repository):
    serve = Serve(echo_repository, "--max-restarts", "2", *FAST_RESTARTS)
    try:
        for ready in (1, 2, 3):
            serve.wait_for("press Ctrl-C", ready)
            kill_stubs(echo_repository)
        assert serve.exit_status(90) == 1, serve.log()
    finally:
        serve.close()
    log = serve.log()
    assert log.count("watch: python-backend stub(s) died: echo version 1 instance echo_0_0.") == 3, log
    assert "restarting tritonserver in 0.5 s (restart 1 in a row, at most 2)" in log
    assert "restarting tritonserver in 1.0 s (restart 2 in a row, at most 2)" in log
    assert log.count("ready again after") == 2
    assert "giving up after 2 restart(s) in a row (--max-restarts 2)" in log
    # the backoff is waited out: from the announcement to the next launch
    for delay, n in ((0.5, 1), (1.0, 2)):
        announced = serve.wait_for(f"restarting tritonserver in {delay:.1f} s")
        launched = serve.wait_for("starting tritonserver:", n + 1)
        assert launched - announced >= delay * 0.9, (delay, launched - announced)
    assert _processes_mentioning(str(echo_repository)) == []


@pytest.mark.parametrize("how", ["SIGKILL", "SIGABRT"])  # the OOM killer; a crash (lock_exception)
def test_a_crashed_tritonserver_is_restarted_and_a_stopped_one_ends_serve(echo_repository, how):
    serve = Serve(echo_repository, *FAST_RESTARTS)
    try:
        serve.wait_for("press Ctrl-C")
        pid = int(next(line for _, line in serve.lines if "tritonserver pid" in line).split("tritonserver pid")[1]
                  .split()[0])
        os.kill(pid, getattr(signal, how))
        serve.wait_for("ready again after")
        serve.wait_for("press Ctrl-C", 2)
        http_line = [line for _, line in serve.lines if "HTTP     http://" in line][-1]
        assert check_health(http_line.split("http://")[1].strip()).healthy
        second = int([line for _, line in serve.lines if "tritonserver pid" in line][-1]
                     .split("tritonserver pid")[1].split()[0])
        os.kill(second, signal.SIGTERM)  # not a crash: someone stopped it, so serve ends with the reason
        assert serve.exit_status(60) != 0, serve.log()
    finally:
        serve.close()
    log = serve.log()
    assert f"tritonserver died of {how}" in log and "restarts tritonserver on the same ports" in log, log
    assert log.count("ready again after") == 1 and "tritonserver exited by itself" in log, log
    assert _processes_mentioning(str(echo_repository)) == []


@pytest.mark.parametrize("ports", ["fixed", "free"])
def test_port_taken_during_a_restart_is_waited_for_or_repicked(echo_repository, ports):
    fixed = {name: free_port() for name in ("http", "grpc", "metrics")}
    serve = Serve(echo_repository, "--restart-backoff", "1", "--restart-backoff-max", "1",
                  ports=fixed if ports == "fixed" else None)
    try:
        serve.wait_for("press Ctrl-C")
        http_line = next(line for _, line in serve.lines if "HTTP     http://" in line)
        port = int(http_line.rsplit(":", 1)[1])
        kill_stubs(echo_repository)
        serve.wait_for("restarting tritonserver in 1.0 s")  # the broken server is stopped by now
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            squatter.bind(("127.0.0.1", port))
            squatter.listen()
            serve.wait_for(f"HTTP {port} taken while restarting")
            if ports == "fixed":
                time.sleep(1.5)  # released before the next attempt
        serve.wait_for("ready again after")
        serve.wait_for("press Ctrl-C", 2)
        new_port = int([line for _, line in serve.lines if "HTTP     http://" in line][-1].rsplit(":", 1)[1])
        assert check_health(f"127.0.0.1:{new_port}").healthy
        serve.process.send_signal(signal.SIGINT)
        assert serve.exit_status(CTRL_C_LIMIT_S) == 0, serve.log()
    finally:
        serve.close()
    log = serve.log()
    if ports == "fixed":
        assert "waiting for them" in log and new_port == port
    else:
        assert "picking other free ports" in log and new_port != port
    assert _processes_mentioning(str(echo_repository)) == []


# --------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_while_backing_off_ends_serve_within_5_s(echo_repository):
    serve = Serve(echo_repository, "--restart-backoff", "60", "--restart-backoff-max", "60")
    try:
        serve.wait_for("press Ctrl-C")
        kill_stubs(echo_repository)
        serve.wait_for("restarting tritonserver in 60.0 s")
        sent = time.monotonic()
        serve.process.send_signal(signal.SIGINT)
        assert serve.exit_status(CTRL_C_LIMIT_S) == 0, serve.log()
        print(f"\nCtrl-C while backing off: serve exited {time.monotonic() - sent:.1f} s later")
    finally:
        serve.close()
    assert _processes_mentioning(str(echo_repository)) == []


@pytest.mark.parametrize("when", ["first start-up", "restart start-up"])
def test_ctrl_c_while_starting_ends_serve_within_5_s(tmp_path, when):
    repository = tmp_path / "model_repository"
    marker = tmp_path / "loaded-once"
    _write_model(repository, "echo", slow_reload_model(marker))
    if when == "first start-up":
        marker.touch()
    serve = Serve(repository, "--restart-backoff", "0.1", "--restart-backoff-max", "0.1")
    try:
        if when == "restart start-up":
            serve.wait_for("press Ctrl-C")
            kill_stubs(repository)
            serve.wait_for("starting tritonserver:", 2)
        else:
            serve.wait_for("starting tritonserver:")
        deadline = time.monotonic() + 30
        while not stubs_of(repository, "echo"):  # initialize() is running (and hangs)
            assert time.monotonic() < deadline, serve.log()
            time.sleep(0.1)
        sent = time.monotonic()
        serve.process.send_signal(signal.SIGINT)
        status = serve.exit_status(CTRL_C_LIMIT_S)
        print(f"\nCtrl-C during the {when}: serve exited {time.monotonic() - sent:.1f} s later")
    finally:
        serve.close()
    assert status == (130 if when == "first start-up" else 0), serve.log()
    assert "press Ctrl-C" not in serve.log() or when == "restart start-up"
    time.sleep(0.5)
    assert _processes_mentioning(str(repository)) == []


# --------------------------------------------------------------------------- model control


def test_explicit_model_control_without_a_key_is_refused_in_one_line(echo_repository):
    command = [sys.executable, "-m", "hf2triton.cli", "serve", "--model-repository", str(echo_repository),
               "--model-control-mode", "explicit", "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    refused = subprocess.run(command, capture_output=True, text=True, env=cli_env(), timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: "), refused.stderr
    assert "TRITON_ADMIN_KEY" in refused.stderr and "--allow-unauthenticated-model-control" in refused.stderr


def test_explicit_model_control_without_a_key_runs_when_allowed(echo_repository):
    serve = Serve(echo_repository, "--model-control-mode", "explicit", "--allow-unauthenticated-model-control")
    try:
        serve.wait_for("press Ctrl-C")
        assert "model control is open" in serve.log()
        assert "models READY: echo" in serve.log()
        serve.process.send_signal(signal.SIGINT)
        assert serve.exit_status(CTRL_C_LIMIT_S) == 0, serve.log()
    finally:
        serve.close()
