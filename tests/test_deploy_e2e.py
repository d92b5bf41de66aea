"""The compose file's tritonserver command line, run by the real (bundled) server, and the
restricted APIs it sets up: model control refuses requests without the admin key."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from deploy_files import load_compose, load_k8s, read_env_file
from hf2triton.serving import (
    LocalTritonServer,
    ServerConfig,
    find_bundled_tritonserver,
    free_port,
    prepare_backend_directory,
    server_environment,
)
from test_server import ECHO_MODEL_PY, _write_model
from test_supervision import kill_stubs

pytestmark = pytest.mark.e2e
KEY = "compose-test-key-0123"


def http(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def local_argv(command: list[str], repository: Path, ports: dict[str, int], backend_dir: Path) -> list[str]:
    """The compose command with host-specific values swapped: repository, ports, loopback."""
    swapped = {"model-repository": str(repository), "http-port": ports["http"], "grpc-port": ports["grpc"],
               "metrics-port": ports["metrics"]}
    argv = []
    for arg in command[1:]:
        flag = re.match(r"--([a-z-]+)=", arg).group(1)
        argv.append(f"--{flag}={swapped[flag]}" if flag in swapped else arg)
    return argv + [f"--backend-directory={backend_dir}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
                   "--metrics-address=127.0.0.1", "--allow-gpu-metrics=false"]


@pytest.fixture(scope="module")
def compose_server(tmp_path_factory):
    """The bundled tritonserver started with docker-compose.yml's own command line."""
    repository = tmp_path_factory.mktemp("compose") / "models"
    repository.mkdir()
    _write_model(repository, "echo", ECHO_MODEL_PY)
    command = load_compose({**read_env_file(), "TRITON_ADMIN_KEY": KEY})["services"]["triton"]["command"]
    distribution = find_bundled_tritonserver()
    ports = {name: free_port() for name in ("http", "grpc", "metrics")}
    argv = [str(distribution.server_binary),
            *local_argv(command, repository, ports, prepare_backend_directory(distribution))]
    log = (tmp_path_factory.mktemp("compose-log") / "tritonserver.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=server_environment(distribution),
                               start_new_session=True)
    base = f"http://127.0.0.1:{ports['http']}"
    try:
        deadline = time.monotonic() + 60
        while http_ready(base) != 200:
            assert process.poll() is None, f"the compose command line did not start: see {log.name}"
            assert time.monotonic() < deadline, "not ready in 60 s"
            time.sleep(0.2)
        yield base, f"127.0.0.1:{ports['grpc']}", repository
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def http_ready(base: str) -> int:
    try:
        return http(f"{base}/v2/health/ready")
    except OSError:
        return 0


def test_compose_command_line_runs_and_restricts_model_control(compose_server):
    base, grpc_url, _ = compose_server
    assert http(f"{base}/v2/models/echo/ready") == 200  # --load-model=* loaded it; metadata stays open
    assert http(f"{base}/v2/repository/index", "POST") == 403
    assert http(f"{base}/v2/repository/models/echo/unload", "POST") == 403
    assert http(f"{base}/v2/models/echo/ready") == 200
    assert http(f"{base}/v2/repository/index", "POST", {"admin-key": "wrong-key-123"}) == 403
    assert http(f"{base}/v2/repository/index", "POST", {"admin-key": KEY}) == 200
    assert http(f"{base}/v2/logging", "GET") == 403
    client = grpcclient.InferenceServerClient(grpc_url)
    with pytest.raises(InferenceServerException, match="restricted"):
        client.get_model_repository_index()
    with pytest.raises(InferenceServerException, match="restricted"):
        client.unload_model("echo")
    assert client.is_model_ready("echo")
    headers = {"triton-grpc-protocol-admin-key": KEY}
    assert [m.name for m in client.get_model_repository_index(headers=headers).models] == ["echo"]


def container_health_commands(port: str) -> dict[str, list[str]]:
    """docker-compose.yml's health check and the Kubernetes liveness probe, run here."""
    compose = load_compose({**read_env_file(), "TRITON_ADMIN_KEY": KEY})["services"]["triton"]["healthcheck"]["test"]
    deployment = next(doc for _, doc in load_k8s() if doc["kind"] == "Deployment")
    liveness = deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["exec"]["command"]
    commands = {"compose": compose[1:], "kubernetes": liveness}
    return {name: [sys.executable if arg == "python3" else arg.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
                   for arg in command] for name, command in commands.items()}


def test_container_health_checks_see_a_dead_stub(compose_server):
    """Runs after the test above (it kills the compose server's only stub)."""
    base, _, repository = compose_server
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    commands = container_health_commands(base.rsplit(":", 1)[1])
    for name, command in commands.items():
        run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        assert run.returncode == 0, (name, run.stdout, run.stderr)
    kill_stubs(repository, "echo")
    time.sleep(0.5)
    assert http_ready(base) == 200  # what the probes asked before: blind to the dead stub
    for name, command in commands.items():
        run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        assert run.returncode == 1, (name, run.stdout)
        assert "stub(s) dead: echo version 1 instance echo_0_0" in run.stderr, (name, run.stderr)


def test_restricted_local_server_refuses_without_key(tmp_path: Path):
    repository = tmp_path / "models"
    repository.mkdir()
    _write_model(repository, "echo", ECHO_MODEL_PY)
    config = ServerConfig(repository, http_port=0, grpc_port=0, metrics_port=0, model_control_mode="explicit",
                          load_models=("*",), restricted_api_key=KEY)
    assert KEY not in repr(config)
    with LocalTritonServer(config) as server:
        assert KEY not in server.log_path.read_text()
        unload = f"{server.http_base_url}/v2/repository/models/echo/unload"
        assert http(unload, "POST") == 403
        assert http(f"{server.http_base_url}/v2/models/echo/ready") == 200
        assert http(unload, "POST", config.admin_headers()) == 200
        assert http(f"{server.http_base_url}/v2/models/echo/ready") != 200
        client = grpcclient.InferenceServerClient(server.grpc_url)
        with pytest.raises(InferenceServerException, match="restricted"):
            client.load_model("echo")
        client.load_model("echo", headers=config.admin_headers("grpc"))
        assert client.is_model_ready("echo")


def test_dashboard_and_autoscaler_metrics_exist_on_a_real_server(server):
    """Every Triton metric the Grafana dashboard and the HPA rule query is served (GPU ones aside)."""
    from conftest import TOPICS
    from hf2triton.client import Client
    from test_deploy_static import dashboard_metric_names
    from deploy_files import load_k8s

    with Client(server.grpc_url, model=TOPICS) as client:
        client.infer(["warm the counters"])
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        served = {line.split("{")[0].split(" ")[0] for line in response.read().decode().splitlines()
                  if line and not line.startswith("#")}
    adapter = next(doc for _, doc in load_k8s() if doc["kind"] == "ConfigMap")["data"]["config.yaml"]
    wanted = dashboard_metric_names() | set(re.findall(r"\bnv_[a-z_]+", adapter))
    gpu_metrics = {"nv_gpu_utilization", "nv_gpu_memory_used_bytes"}
    if any(name.startswith("nv_gpu_") for name in served):  # a GPU machine: every wanted metric is served
        assert wanted - served == set()
    else:
        assert wanted - served == gpu_metrics  # no GPU here
