"""Static checks of the gateway's deployment files: the Helm chart (rendered without helm and
validated against the Kubernetes schemas), the KServe InferenceService, the compose service."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from deploy_files import COMPOSE_FILE, K8S_DIR, ROOT, interpolate, read_env_file
from helm_render import UnsupportedTemplate, render_chart, to_jinja
from test_deploy_static import check_tritonserver_args

CHART = ROOT / "deploy" / "helm" / "hf2triton"
KSERVE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
K8S_VERSION = "1.31"
OBJECT_STORAGE = {"modelRepository": {"uri": "s3://bucket/model_repository", "objectStorageSecret": "s3-creds"},
                  "adminKey": {"create": True, "value": "0123456789abcdef"}, "gateway": {"apiKeySecret": "gw-key"}}


def by_kind_and_name(documents: list[dict]) -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in documents}


@pytest.fixture(scope="module")
def chart() -> dict[tuple[str, str], dict]:
    return by_kind_and_name(render_chart(CHART, "demo"))


@pytest.mark.parametrize("overrides", [{}, OBJECT_STORAGE, {"gateway": {"enabled": False}}],
                         ids=["defaults", "object-storage", "no-gateway"])
def test_chart_renders_schema_valid_manifests(overrides):
    import kubernetes_validate

    documents = render_chart(CHART, "demo", overrides)
    for doc in documents:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises naming the bad field
    kinds = sorted(doc["kind"] for doc in documents)
    if overrides.get("gateway", {}).get("enabled") is False:
        assert not any("gateway" in doc["metadata"]["name"] for doc in documents)
    else:
        assert kinds.count("Deployment") == 2 and kinds.count("PodDisruptionBudget") == 2
        assert "HorizontalPodAutoscaler" in kinds


def test_schema_validation_catches_a_broken_render():
    import kubernetes_validate
    from kubernetes_validate.utils import ValidationError

    deployment = by_kind_and_name(render_chart(CHART, "demo"))[("Deployment", "demo-gateway")]
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eighty"
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_renderer_refuses_template_syntax_it_does_not_understand():
    with pytest.raises(UnsupportedTemplate):
        to_jinja('{{ include "x" . }}')
    with pytest.raises(UnsupportedTemplate):
        to_jinja("{{ .Values.x | b64enc }}")
    with pytest.raises(UnsupportedTemplate):
        render_chart(CHART, "demo", {"adminKey": {"create": True, "value": ""}})  # required value


def pods(chart) -> dict[str, dict]:
    return {name: doc["spec"]["template"] for (kind, name), doc in chart.items() if kind == "Deployment"}


def test_pods_are_locked_down_with_resources(chart):
    for name, pod in pods(chart).items():
        security = pod["spec"]["securityContext"]
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert security["runAsNonRoot"] is True
        for container in pod["spec"]["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert container["resources"]["requests"] and container["resources"]["limits"], name
    triton = pods(chart)["demo-triton"]["spec"]
    # Read-only root: Triton still writes /tmp and /dev/shm, which must be volumes.
    mounts = {m["mountPath"] for m in triton["containers"][0]["volumeMounts"]}
    assert {"/tmp", "/dev/shm"} <= mounts
    assert triton["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_probes_ports_and_services_fit_together(chart):
    gateway = pods(chart)["demo-gateway"]["spec"]["containers"][0]
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert gateway["ports"][0]["containerPort"] == 8080
    assert "--triton-url=demo-triton:8001" in gateway["args"]
    service_ports = {p["name"]: p["port"] for p in chart[("Service", "demo-triton")]["spec"]["ports"]}
    assert service_ports["grpc"] == 8001
    triton = pods(chart)["demo-triton"]["spec"]["containers"][0]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert not check_tritonserver_args(triton["args"][1:])
    for component in ("triton", "gateway"):
        selector = chart[("Service", f"demo-{component}")]["spec"]["selector"]
        labels = pods(chart)[f"demo-{component}"]["metadata"]["labels"]
        assert selector.items() <= labels.items()


def test_autoscaler_and_disruption_budgets_mean_something(chart):
    hpa = chart[("HorizontalPodAutoscaler", "demo-triton")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "demo-triton"
    adapter = yaml.safe_load((K8S_DIR / "prometheus-adapter.yaml").read_text())
    exposed = yaml.safe_load(adapter["data"]["config.yaml"])["rules"][0]["name"]["as"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == exposed  # the queue-time metric the adapter serves
    for component in ("triton", "gateway"):
        pdb = chart[("PodDisruptionBudget", f"demo-{component}")]["spec"]
        deployment = chart[("Deployment", f"demo-{component}")]["spec"]
        assert pdb["selector"]["matchLabels"].items() <= deployment["template"]["metadata"]["labels"].items()
        # A budget of 1 available pod with 1 replica would block every drain; with 2 it keeps one serving.
        assert deployment["replicas"] > pdb["minAvailable"]
    assert hpa["minReplicas"] > chart[("PodDisruptionBudget", "demo-triton")]["spec"]["minAvailable"]


def test_object_storage_replaces_the_volume_and_keys_come_from_secrets():
    chart = by_kind_and_name(render_chart(CHART, "demo", OBJECT_STORAGE))
    triton = chart[("Deployment", "demo-triton")]["spec"]["template"]["spec"]
    assert "--model-repository=s3://bucket/model_repository" in triton["containers"][0]["args"]
    assert "models" not in {v["name"] for v in triton["volumes"]}
    assert triton["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    secret = chart[("Secret", "hf2triton-admin")]
    assert secret["stringData"]["admin-key"] == "0123456789abcdef"
    gateway_env = {e["name"]: e for e in chart[("Deployment", "demo-gateway")]["spec"]["template"]["spec"]
                   ["containers"][0]["env"]}
    assert gateway_env["HF2TRITON_GATEWAY_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "gw-key",
                                                                                      "key": "api-key"}
    assert gateway_env["TRITON_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "hf2triton-admin"


# KServe's CRD schema is not in kubernetes-validate: check the InferenceService's structure, and
# validate the pod it describes (the predictor is a PodSpec plus KServe's model fields) as a Pod.
KSERVE_MODEL_FIELDS = ("modelFormat", "protocolVersion", "storageUri", "runtime", "runtimeVersion")
KSERVE_COMPONENT_FIELDS = ("minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "model",
                           "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher")


def test_kserve_inference_service_is_well_formed():
    import kubernetes_validate

    service = yaml.safe_load(KSERVE.read_text())
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "v2"
    assert model["storageUri"].split("://")[0] in ("pvc", "s3", "gs")
    assert "--model-repository=/mnt/models" in model["args"]  # where KServe puts storageUri
    assert not check_tritonserver_args(model["args"][1:])
    assert predictor["minReplicas"] >= 2 and predictor["maxReplicas"] >= predictor["minReplicas"]
    container = {"name": "kserve-container", **{k: v for k, v in model.items() if k not in KSERVE_MODEL_FIELDS}}
    pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_COMPONENT_FIELDS}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "hf2triton-predictor"},
           "spec": {**pod_spec, "containers": [container]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    assert pod_spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    port = next(a for a in model["args"] if a.startswith("--http-port=")).split("=")[1]
    assert str(model["readinessProbe"]["httpGet"]["port"]) == port


def test_compose_gateway_service():
    compose = yaml.safe_load(interpolate(COMPOSE_FILE.read_text(), {**read_env_file(), "TRITON_ADMIN_KEY": "k" * 16}))
    gateway = compose["services"]["gateway"]
    assert (ROOT / gateway["build"]["dockerfile"]).is_file()
    assert all(port.startswith("127.0.0.1:") for port in gateway["ports"])
    assert gateway["command"][gateway["command"].index("--triton-url") + 1] == "triton:8001"
    assert gateway["read_only"] is True
    assert "/health" in " ".join(gateway["healthcheck"]["test"])


def test_gateway_image_entry_point_needs_no_export_stack():
    """The gateway image installs only the gateway's dependencies: importing it must not pull torch & co."""
    code = ("import sys, hf2triton.gateway.__main__, hf2triton.gateway.app; "
            "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'onnx') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    dockerfile = (ROOT / "deploy" / "gateway.Dockerfile").read_text()
    assert '"python", "-m", "hf2triton.gateway"' in dockerfile
