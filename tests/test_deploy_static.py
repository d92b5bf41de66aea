"""Static checks of the deployment files (no Docker engine or cluster here): docker-compose.yml,
.env, the Triton Dockerfile, Prometheus/Grafana provisioning and the Kubernetes manifests."""

from __future__ import annotations

import ast
import json
import re
import sys

import pytest
import yaml

from deploy_files import (
    COMPOSE_FILE,
    K8S_DIR,
    ROOT,
    interpolate,
    load_compose,
    load_k8s,
    read_env_file,
    restricted_api_names,
    tritonserver_flags,
)

KEY = "0123456789abcdef"
NVCR = "nvcr.io/nvidia/"


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return {**read_env_file(), "TRITON_ADMIN_KEY": KEY}


@pytest.fixture(scope="module")
def compose(env) -> dict:
    return load_compose(env)


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


def tritonserver_args(command: list[str]) -> list[str]:
    assert command[0] == "tritonserver", command
    return command[1:]


def check_tritonserver_args(args: list[str]) -> list[str]:
    """Every problem with a tritonserver argument list, judged by the bundled server's --help."""
    flags, apis, problems = tritonserver_flags(), restricted_api_names(), []
    for arg in args:
        match = re.fullmatch(r"--([a-z0-9-]+)=(.+)", arg)
        if not match:
            problems.append(f"{arg!r} is not --flag=value")
            continue
        flag, value = match.groups()
        if flag not in flags:
            problems.append(f"--{flag} is not a tritonserver flag")
        if flag in ("http-restricted-api", "grpc-restricted-protocol"):
            restricted, _, header = value.partition(":")
            unknown = set(restricted.split(",")) - apis
            if unknown or not re.fullmatch(r"[a-z-]+=\S+", header):
                problems.append(f"--{flag}={value}: unknown APIs {unknown} or no key=value")
    return problems


def test_env_pins_one_triton_release(env):
    assert re.fullmatch(r"\d{2}\.\d{2}", env["TRITON_VERSION"])


def test_compose_requires_the_admin_key():
    with pytest.raises(KeyError, match="TRITON_ADMIN_KEY"):
        load_compose(read_env_file())


def test_every_nvidia_image_uses_the_pinned_release(services, env):
    release = env["TRITON_VERSION"]
    images = {name: s["image"] for name, s in services.items() if s.get("image", "").startswith(NVCR)}
    assert images["builder"] == f"{NVCR}tensorrt:{release}-py3"
    assert images["sdk"] == f"{NVCR}tritonserver:{release}-py3-sdk"
    dockerfile = (ROOT / services["triton"]["build"]["dockerfile"]).read_text()
    assert f"FROM {NVCR}tritonserver:${{TRITON_VERSION}}-py3" in dockerfile
    assert services["triton"]["build"]["args"]["TRITON_VERSION"] == release
    assert services["triton"]["image"].endswith(f":{release}")
    raw = COMPOSE_FILE.read_text()
    assert not re.search(r"nvcr\.io/nvidia/[a-z]+:\d", raw), "an NVIDIA image tag is hard-coded"


def test_services_and_profiles(services):
    assert "profiles" not in services["triton"]  # `docker compose up -d triton` needs no profile
    assert services["triton-cpu"]["profiles"] == ["cpu"]
    assert services["builder"]["profiles"] == ["build"]
    assert services["sdk"]["profiles"] == ["sdk"]
    assert services["prometheus"]["profiles"] == services["grafana"]["profiles"] == ["monitoring"]
    assert "triton" in services["triton-cpu"]["networks"]["default"]["aliases"]


def gpu_devices(service: dict) -> list[dict]:
    return service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_gpu_is_reserved_for_server_and_builder_only(services):
    for name in ("triton", "builder"):
        assert [d["capabilities"] for d in gpu_devices(services[name])] == [["gpu"]]
    for name in ("triton-cpu", "sdk", "prometheus", "grafana"):
        assert gpu_devices(services[name]) == []


HEALTH_MODULE = ["python3", "-m", "hf2triton.serving.health"]


def health_command_problems(command: list[str], http_port: str) -> list[str]:
    """What is wrong with a container health/liveness command (it must run the stub-aware check)."""
    problems = []
    if command[:3] != HEALTH_MODULE:
        problems.append(f"{command} does not run {' '.join(HEALTH_MODULE)}")
    options = dict(zip(command[3::2], command[4::2]))
    if options.get("--url") != f"127.0.0.1:{http_port}":
        problems.append(f"{command} does not check the server's HTTP port {http_port}")
    if not (ROOT / "src" / "hf2triton" / "serving" / "health.py").is_file():
        problems.append("src/hf2triton/serving/health.py is missing")
    return problems


def test_server_health_check_ports_and_command(services):
    dockerfile = (ROOT / "deploy" / "triton.Dockerfile").read_text()
    assert "COPY src /opt/hf2triton/src" in dockerfile and "pip install --no-cache-dir --no-deps /opt/hf2triton" in dockerfile
    for name in ("triton", "triton-cpu"):
        service = services[name]
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD"
        http_port = next(a.split("=")[1] for a in service["command"] if a.startswith("--http-port="))
        assert health_command_problems(test[1:], http_port) == []
        timeout = float(test[test.index("--timeout") + 1])
        assert timeout + 1.5 < float(service["healthcheck"]["timeout"].rstrip("s"))  # 1 s confirmation included
        assert service["command"] == services["triton"]["command"]
        args = tritonserver_args(service["command"])
        assert check_tritonserver_args(args) == []
        assert f"--http-restricted-api=model-repository,shared-memory,trace,logging:admin-key={KEY}" in args
        assert any(a.startswith("--grpc-restricted-protocol=") and a.endswith(KEY) for a in args)
        assert {v.split(":")[-1] for v in service["volumes"]} >= {"ro"}


def test_every_published_port_is_loopback_only(services):
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond this machine"


def test_every_referenced_host_path_exists(services):
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                path = ROOT / source
                assert path.exists() or source == "./model_repository", f"{name}: {source} is missing"
        if "build" in service:
            assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert (ROOT / "model_repository").is_dir()


def test_builder_runs_the_exporter_with_engines_then_the_check(services):
    script = " ".join(services["builder"]["command"])
    assert "python build/export.py" in script and "--engines" in script
    assert "hf2triton check" in script
    assert (ROOT / "build" / "export.py").is_file()
    assert "tensorrt" not in script  # the image's own TensorRT; no pip-installed one


def test_dockerfile_copies_existing_files_and_installs_what_the_steps_import():
    dockerfile = (ROOT / "deploy" / "triton.Dockerfile").read_text()
    for source in re.findall(r"^COPY\s+(.+)\s+\S+$", dockerfile, flags=re.MULTILINE):
        for item in source.split():
            assert (ROOT / item).exists(), f"COPY {item}: missing"
    pinned = dict(
        line.split("==") for line in (ROOT / "deploy" / "requirements-triton.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    constraints = dict(
        line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert {k: constraints[k] for k in pinned} == pinned, "container pins differ from constraints.txt"
    imported = set()
    for module in (ROOT / "src" / "hf2triton" / "backends").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    siblings = {module.stem for module in (ROOT / "src" / "hf2triton" / "backends").glob("*.py")}
    third_party = imported - siblings - set(sys.stdlib_module_names) - {"triton_python_backend_utils"}
    assert third_party <= set(pinned), f"the steps import {third_party - set(pinned)}, not installed in the image"


def test_prometheus_and_grafana_provisioning():
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["triton:8002"]
    provisioning = ROOT / "deploy" / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    provider = yaml.safe_load((provisioning / "dashboards" / "hf2triton.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "hf2triton.json").read_text())
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("throughput", "p99", "queue", "compute", "gpu utilisation", "gpu memory"):
        assert topic in titles
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == datasource["uid"]


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "hf2triton.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    return set(re.findall(r"\bnv_[a-z_]+", exprs))


# --------------------------------------------------------------------------- Kubernetes

K8S_VERSION = "1.31"


def test_kubernetes_manifests_validate_against_the_schema():
    import kubernetes_validate

    documents = load_k8s()
    kinds = {doc["kind"] for _, doc in documents}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "PodDisruptionBudget"} <= kinds
    for path, doc in documents:
        if doc["kind"] == "Kustomization":
            listed = {K8S_DIR / r for r in doc["resources"]}
            assert listed == {p for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml"}
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises with the path of the error


def test_kubernetes_schema_validation_catches_mistakes():
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    deployment = next(doc for _, doc in load_k8s() if doc["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = [8000]
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_kubernetes_deployment_probes_service_and_autoscaler_fit_together():
    docs = {doc["kind"]: doc for _, doc in load_k8s()}
    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    liveness = container["livenessProbe"]["exec"]["command"]
    http_port = next(str(p["containerPort"]) for p in container["ports"] if p["name"] == "http")
    assert health_command_problems(liveness, http_port) == []
    assert float(liveness[liveness.index("--timeout") + 1]) + 1.5 < container["livenessProbe"]["timeoutSeconds"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    args = tritonserver_args(container["args"])
    assert check_tritonserver_args([interpolate_k8s(a) for a in args]) == []
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    rules = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])["rules"]
    served = {rule["name"]["as"] for rule in rules}
    assert {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]} <= served
    release = read_env_file()["TRITON_VERSION"]
    assert container["image"].endswith(f":{release}"), "the Kubernetes image is not the pinned release"


def interpolate_k8s(arg: str) -> str:
    """Kubernetes expands $(VAR) in args from the container's env."""
    return re.sub(r"\$\(([A-Z_]+)\)", KEY, arg)


def test_compose_interpolation_helper():
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("${A} ${B:-x} ${EMPTY:-${A}} $$HOME", env) == "1 x 1 $HOME"
    with pytest.raises(KeyError):
        interpolate("${B:?needed}", env)


BLOCK_HEAVY = """
import importlib.abc, runpy, sys
HEAVY = {"torch", "transformers", "onnx", "onnxruntime", "numpy", "tokenizers", "tritonclient", "grpc",
         "optimum", "sentence_transformers", "safetensors", "google", "yaml"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError("not in the Triton image: " + name)
sys.meta_path.insert(0, Block())
sys.argv = ["health", *sys.argv[1:]]
runpy.run_module("hf2triton.serving.health", run_name="__main__")
"""


def test_health_module_runs_without_the_export_dependencies():
    """The image installs hf2triton with --no-deps: the health check must need the standard library only."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    run = subprocess.run([sys.executable, "-c", BLOCK_HEAVY, "--url", f"127.0.0.1:{closed_port}", "--timeout", "2"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith(f"unhealthy: tritonserver at http://127.0.0.1:{closed_port} does not answer"), run.stderr
    assert "Traceback" not in run.stderr
