"""The local tritonserver wrapper, against the real server bundled in nvidia-pytriton."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import hf2triton.serving
from hf2triton.errors import OptionsError, ServerError
from hf2triton.serving import (
    LocalTritonServer,
    ServerConfig,
    SupervisionPolicy,
    find_bundled_tritonserver,
    free_port,
)

ECHO_MODEL_PY = textwrap.dedent(
    """
    import triton_python_backend_utils as pb_utils


    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                text = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("ECHO", text)]))
            return responses
    """
)

FAILING_MODEL_PY = textwrap.dedent(
    """
    class TritonPythonModel:
        def initialize(self, args):
            raise RuntimeError("tokenizer.json is missing on purpose")

        def execute(self, requests):
            return []
    """
)


def _bytes_model_config(name: str) -> str:
    config = model_config_pb2.ModelConfig(name=name, backend="python", max_batch_size=8)
    text_in = config.input.add(name="TEXT", data_type=model_config_pb2.TYPE_STRING)
    text_in.dims.append(1)
    echo_out = config.output.add(name="ECHO", data_type=model_config_pb2.TYPE_STRING)
    echo_out.dims.append(1)
    config.dynamic_batching.max_queue_delay_microseconds = 100
    config.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_CPU, count=1)
    return text_format.MessageToString(config)


def _write_model(repository: Path, name: str, model_py: str) -> None:
    version_dir = repository / name / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.py").write_text(model_py)
    (repository / name / "config.pbtxt").write_text(_bytes_model_config(name))  # last: a complete model


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (tritonserver and its stubs name the repository)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and "pytest" not in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def echo_repository(tmp_path: Path) -> Path:
    repository = tmp_path / "model_repository"
    _write_model(repository, "echo", ECHO_MODEL_PY)
    return repository


# ----------------------------------------------------------------------------- no server


def test_bundled_server_is_found() -> None:
    distribution = find_bundled_tritonserver()
    assert distribution.server_binary.is_file()
    assert distribution.stub.parent.name == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert distribution.library_dirs


def test_unknown_model_control_mode_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model_control_mode"):
        ServerConfig(tmp_path, model_control_mode="bogus")


def test_load_models_needs_explicit_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="explicit"):
        ServerConfig(tmp_path, load_models=("echo",))
    assert "--load-model=echo" in ServerConfig(
        tmp_path, model_control_mode="explicit", load_models=("echo",), restricted_api_key="k" * 16
    ).to_argv(tmp_path)


def test_explicit_model_control_needs_a_key_or_an_explicit_allowance(tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match="allow-unauthenticated-model-control"):
        ServerConfig(tmp_path, model_control_mode="explicit")
    open_control = ServerConfig(tmp_path, model_control_mode="explicit", allow_unauthenticated_model_control=True)
    assert "--model-control-mode=explicit" in open_control.to_argv(tmp_path)
    assert not any(arg.startswith("--http-restricted-api") for arg in open_control.to_argv(tmp_path))
    keyed = ServerConfig(tmp_path, model_control_mode="explicit", restricted_api_key="k" * 16)
    assert any(arg.startswith("--http-restricted-api=model-repository") for arg in keyed.to_argv(tmp_path))


def test_bad_settings_are_options_errors_listing_every_problem(tmp_path: Path) -> None:
    with pytest.raises(OptionsError) as raised:
        ServerConfig(tmp_path, http_port=70000, grpc_port=-1, log_verbose=-2)
    message = str(raised.value)
    assert "http_port must be in 0..65535, not 70000" in message
    assert "grpc_port must be in 0..65535, not -1" in message and "log_verbose" in message


def test_restart_policy_backs_off_exponentially_up_to_the_cap() -> None:
    policy = SupervisionPolicy(backoff_s=0.5, backoff_max_s=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(OptionsError, match="backoff_max_s"):
        SupervisionPolicy(backoff_s=5.0, backoff_max_s=1.0)
    with pytest.raises(OptionsError, match="max_restarts must be >= 0"):
        SupervisionPolicy(max_restarts=-1)


def test_serving_imports_no_heavy_libraries() -> None:
    code = "import sys, hf2triton.serving; print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'torch', 'tritonclient', 'grpc', 'onnxruntime'}))"
    env = dict(os.environ, PYTHONPATH=str(Path(hf2triton.serving.__file__).resolve().parents[2]))
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_argv_binds_every_endpoint_to_loopback(tmp_path: Path) -> None:
    argv = ServerConfig(tmp_path / "repo").to_argv(tmp_path / "backends")
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"):
        assert flag in argv
    assert f"--model-repository={(tmp_path / 'repo').resolve()}" in argv
    assert f"--backend-directory={(tmp_path / 'backends').resolve()}" in argv
    assert "--model-control-mode=none" in argv


def test_ports_of_zero_become_distinct_free_ports(tmp_path: Path) -> None:
    config = ServerConfig(tmp_path, http_port=0, grpc_port=0, metrics_port=0)
    with pytest.raises(ValueError, match="with_free_ports"):
        config.to_argv(tmp_path)
    resolved = config.with_free_ports()
    ports = {resolved.http_port, resolved.grpc_port, resolved.metrics_port}
    assert len(ports) == 3 and 0 not in ports


# ----------------------------------------------------------------------------- real server


@pytest.mark.e2e
def test_server_serves_http_grpc_and_metrics(echo_repository: Path, tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    config = ServerConfig(echo_repository, http_port=0, grpc_port=0, metrics_port=0, log_file=log_file)
    with LocalTritonServer(config) as server:
        pid = server.pid
        assert server.is_running()
        assert server.log_path == log_file

        text = np.array([["héllo wörld".encode()]], dtype=np.object_)

        http = httpclient.InferenceServerClient(server.http_url)
        assert http.is_server_ready() and http.is_model_ready("echo")
        http_input = httpclient.InferInput("TEXT", [1, 1], "BYTES")
        http_input.set_data_from_numpy(text)
        assert http.infer("echo", [http_input]).as_numpy("ECHO").tolist() == text.tolist()
        http.close()

        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        assert grpc.is_server_ready() and grpc.is_model_ready("echo")
        grpc_input = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        grpc_input.set_data_from_numpy(text)
        assert grpc.infer("echo", [grpc_input]).as_numpy("ECHO").tolist() == text.tolist()
        grpc.close()

        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            metrics = response.read().decode()
        assert 'nv_inference_request_success{model="echo",version="1"}' in metrics

    assert not server.is_running()
    assert not Path(f"/proc/{pid}").exists()
    assert _processes_mentioning(str(echo_repository)) == []
    log = log_file.read_text()
    assert "successfully loaded 'echo'" in log
    server.stop()  # idempotent


@pytest.mark.e2e
def test_model_that_fails_to_load_makes_start_fail_fast(tmp_path: Path) -> None:
    repository = tmp_path / "model_repository"
    _write_model(repository, "broken", FAILING_MODEL_PY)
    log_file = tmp_path / "server.log"
    server = LocalTritonServer(ServerConfig(repository, http_port=0, grpc_port=0, metrics_port=0, log_file=log_file))
    with pytest.raises(ServerError) as raised:
        server.start(ready_timeout_s=60)
    message = str(raised.value)
    assert "exited with status" in message  # the server gave up by itself, no timeout
    assert "broken" in message and "tokenizer.json is missing on purpose" in message
    assert str(log_file) in message
    assert not server.is_running()


@pytest.mark.e2e
def test_busy_port_is_reported_before_launch(echo_repository: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = ServerConfig(echo_repository, http_port=port, grpc_port=0, metrics_port=free_port())
        with pytest.raises(ServerError, match="already in use"):
            LocalTritonServer(config).start()


@pytest.mark.e2e
def test_serve_stops_cleanly_on_sigint(echo_repository: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import logging, sys
        from pathlib import Path
        from hf2triton.serving import ServerConfig, serve

        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        config = ServerConfig(Path(sys.argv[1]), http_port=0, grpc_port=0, metrics_port=0, log_file=Path(sys.argv[2]))
        sys.exit(serve(config, ready_timeout_s=60))
        """
    )
    src_dir = Path(hf2triton.serving.__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(src_dir), os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(echo_repository), str(tmp_path / "serve.log")],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 90
    try:
        while not any("press Ctrl-C" in line for line in seen):
            assert process.poll() is None, "serve() exited early:\n" + "".join(seen)
            assert time.monotonic() < deadline, "serve() never became ready:\n" + "".join(seen)
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        assert any("models READY: echo" in line for line in seen), "".join(seen)

        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=45) == 0, "".join(seen)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    time.sleep(0.2)  # let the reader drain
    assert _processes_mentioning(str(echo_repository)) == []


@pytest.mark.parametrize(
    "options, expected",
    [
        (["--http-port", "70000"], "http_port must be in 0..65535, not 70000"),
        (["--http-port", "9000", "--grpc-port", "9000"], "ports must differ"),
        (["--restart-backoff", "-1"], "backoff_s must be >= 0, not -1.0"),
        (["--restart-backoff", "10", "--restart-backoff-max", "1"], "backoff_max_s (1) must be >= backoff_s (10)"),
        (["--model-control-mode", "explicit"], "--allow-unauthenticated-model-control"),
    ],
)
def test_bad_serve_options_end_in_one_line_and_status_2(tmp_path: Path, options: list[str], expected: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(hf2triton.serving.__file__).resolve().parents[2]))
    env.pop("TRITON_ADMIN_KEY", None)
    run = subprocess.run([sys.executable, "-m", "hf2triton.cli", "serve", "--model-repository", str(tmp_path), *options],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr
    assert expected in run.stderr
