"""gRPC TLS end to end: ``hf2triton serve --grpc-use-ssl`` with a self-signed certificate made here,
the library client, ``hf2triton infer`` with and without the root certificate, and the gateway
that ``serve --gateway-port`` runs beside the server (it reaches Triton over gRPC TLS).

The bundled tritonserver 2.51 has TLS for gRPC only; HTTP stays plain, and readiness
polling and ``hf2triton health`` keep using it.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import hf2triton.serving
from hf2triton.gateway.settings import GatewaySettings
from hf2triton.client import Classification, Client
from hf2triton.errors import OptionsError, ServerUnavailableError
from hf2triton.serving import LocalTritonServer, ServerConfig, free_port

SRC = Path(hf2triton.serving.__file__).resolve().parents[2]
MODEL = "tls_topics"
TEXTS = ["TLS keeps this text private.", "A second text."]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])))
    env.pop("TRITON_ADMIN_KEY", None)
    return env


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hf2triton.cli", *args], capture_output=True, text=True,
                          env=_env(), timeout=timeout)


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (in subjectAltName, which gRPC checks) and its key."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """The server's self-signed certificate and key."""
    return _self_signed(tmp_path_factory.mktemp("tls"), "server")


@pytest.fixture(scope="module")
def client_certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A client's self-signed certificate (its own CA, given to the server as --grpc-root-cert) and key."""
    return _self_signed(tmp_path_factory.mktemp("tls_client"), "client")


# ----------------------------------------------------------------------------- no server


def test_tls_settings_render_tritonservers_flags(tmp_path: Path, certificate) -> None:
    cert, key = certificate
    argv = ServerConfig(tmp_path, grpc_use_ssl=True, grpc_server_cert=cert, grpc_server_key=key).to_argv(tmp_path)
    assert {"--grpc-use-ssl=true", f"--grpc-server-cert={cert}", f"--grpc-server-key={key}"} <= set(argv)
    assert not any(arg.startswith(("--grpc-root-cert", "--grpc-use-ssl-mutual")) for arg in argv)
    mutual = ServerConfig(tmp_path, grpc_use_ssl_mutual=True, grpc_server_cert=cert, grpc_server_key=key,
                          grpc_root_cert=cert).to_argv(tmp_path)
    assert {"--grpc-use-ssl=true", "--grpc-use-ssl-mutual=true", f"--grpc-root-cert={cert}"} <= set(mutual)
    assert not any("ssl" in arg or "cert" in arg for arg in ServerConfig(tmp_path).to_argv(tmp_path))


def test_tls_setting_mistakes_are_options_errors(tmp_path: Path, certificate) -> None:
    cert, key = certificate
    with pytest.raises(OptionsError, match=r"needs grpc_server_cert .*needs grpc_server_key"):
        ServerConfig(tmp_path, grpc_use_ssl=True)
    with pytest.raises(OptionsError, match="grpc_server_cert, grpc_server_key need grpc_use_ssl"):
        ServerConfig(tmp_path, grpc_server_cert=cert, grpc_server_key=key)
    with pytest.raises(OptionsError, match="grpc_use_ssl_mutual needs grpc_root_cert"):
        ServerConfig(tmp_path, grpc_use_ssl_mutual=True, grpc_server_cert=cert, grpc_server_key=key)
    with pytest.raises(OptionsError, match=f"grpc_server_key {tmp_path / 'missing.key'} is not a file"):
        ServerConfig(tmp_path, grpc_use_ssl=True, grpc_server_cert=cert, grpc_server_key=tmp_path / "missing.key")
    if os.geteuid() != 0:  # root reads anything
        unreadable = tmp_path / "unreadable.key"
        unreadable.write_bytes(key.read_bytes())
        unreadable.chmod(0)
        with pytest.raises(OptionsError, match="is not readable"):
            ServerConfig(tmp_path, grpc_use_ssl=True, grpc_server_cert=cert, grpc_server_key=unreadable)


@pytest.mark.parametrize(
    "command, expected",
    [
        (["serve", "--grpc-use-ssl"], "grpc TLS needs grpc_server_cert (--grpc-server-cert)"),
        (["serve", "--grpc-server-cert", "/nonexistent.pem"], "grpc_server_cert needs grpc_use_ssl"),
        (["infer", "x", "--root-certificates", "/nonexistent.pem"], "--root-certificates needs TLS: add --ssl"),
        (["infer", "x", "--ssl", "--root-certificates", "/nonexistent.pem"], "is not a file"),
        (["perf", "--private-key", "/k.pem"], "--private-key needs TLS: add --ssl"),
        (["verify", "--checkpoint", "/c", "--certificate-chain", "/c.pem"], "--certificate-chain needs TLS"),
        (["serve", "--gateway-port", "0", "--grpc-use-ssl-mutual", "--grpc-server-cert", "{cert}", "--grpc-server-key",
          "{key}", "--grpc-root-cert", "{cert}"], "--gateway-port cannot be combined with --grpc-use-ssl-mutual"),
        (["gateway", "--triton-root-certificates", "/nonexistent.pem"], "root_certificates '/nonexistent.pem' is not"),
    ],
)
def test_tls_flag_mistakes_end_in_one_line_and_status_2(tmp_path: Path, certificate, command: list[str],
                                                         expected: str) -> None:
    cert, key = certificate
    command = [part.format(cert=cert, key=key) for part in command]
    if command[0] == "serve":
        command = [*command, "--model-repository", str(tmp_path)]
    run = _cli(*command, timeout=60)
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr
    assert expected in run.stderr


def test_gateway_tls_settings(certificate) -> None:
    cert, key = certificate
    assert GatewaySettings().triton_tls is None
    tls = GatewaySettings(triton_ssl=True, triton_root_certificates=cert).triton_tls
    assert tls is not None and tls.root_certificates == cert and tls.private_key is None
    with pytest.raises(OptionsError, match="needs both private_key and certificate_chain"):
        GatewaySettings(triton_ssl=True, triton_private_key=key)
    with pytest.raises(OptionsError, match="need TLS"):
        GatewaySettings(triton_root_certificates=cert)


# ----------------------------------------------------------------------------- real server


@pytest.fixture(scope="module")
def tls_repository(tmp_path_factory, tiny_checkpoint) -> Path:
    """A repository holding one tiny classifier: quick to export and to load."""
    from hf2triton.pipeline import ExportOptions, export_checkpoint

    root = tmp_path_factory.mktemp("tls_repository") / "model_repository"
    export_checkpoint(ExportOptions(checkpoint=tiny_checkpoint("bert"), output_dir=root, name=MODEL))
    return root


@pytest.fixture(scope="module")
def tls_server(tls_repository: Path, certificate, tmp_path_factory):
    """``hf2triton serve --grpc-use-ssl --gateway-port 0`` as a user runs it; yields (grpc_url, http_url,
    its log lines), once the gateway beside it listens."""
    cert, key = certificate
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    while len({http_port, grpc_port, metrics_port}) < 3:
        grpc_port, metrics_port = free_port(), free_port()
    log_file = tmp_path_factory.mktemp("tls_server") / "tritonserver.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "hf2triton.cli", "serve", "--model-repository", str(tls_repository),
         "--http-port", str(http_port), "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
         "--log-file", str(log_file), "--grpc-use-ssl", "--grpc-server-cert", str(cert), "--grpc-server-key", str(key),
         "--gateway-port", "0"],
        stderr=subprocess.PIPE, text=True, env=_env(),
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 240
    try:
        while not any("gateway  http://" in line for line in seen):
            assert process.poll() is None, "serve exited early:\n" + "".join(seen)
            assert time.monotonic() < deadline, "serve never became ready:\n" + "".join(seen)
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        yield f"127.0.0.1:{grpc_port}", f"127.0.0.1:{http_port}", seen
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=45)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.e2e
def test_serve_announces_grpc_tls_and_health_still_works(tls_server) -> None:
    grpc_url, http_url, seen = tls_server
    assert any(f"gRPC     {grpc_url} (TLS)" in line for line in seen), "".join(seen)
    health = _cli("health", "--url", http_url)
    assert health.returncode == 0, health.stdout + health.stderr


@pytest.mark.e2e
def test_client_over_grpc_tls_with_the_root_certificate(tls_server, certificate) -> None:
    grpc_url, _, _ = tls_server
    cert, _ = certificate
    with Client(grpc_url, model=MODEL, ssl=True, root_certificates=cert, timeout_s=30) as client:
        client.wait_for_model(timeout_s=60)
        results = client.infer(TEXTS)
    assert len(results) == 2 and all(isinstance(result, Classification) for result in results)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "tls, expected",
    [
        ({"ssl": True}, "CERTIFICATE_VERIFY_FAILED"),  # the system's trust store does not know the certificate
        ({}, "cannot be reached|unavailable"),  # plain gRPC to a TLS port
    ],
)
def test_client_without_the_root_certificate_fails_clearly(tls_server, tls: dict, expected: str) -> None:
    grpc_url, _, _ = tls_server
    with Client(grpc_url, model=MODEL, timeout_s=10, **tls) as client:
        with pytest.raises(ServerUnavailableError, match=expected):
            client.infer(TEXTS)


@pytest.mark.e2e
def test_cli_infer_over_grpc_tls(tls_server, certificate) -> None:
    grpc_url, _, _ = tls_server
    cert, _ = certificate
    ok = _cli("infer", *TEXTS, "--url", grpc_url, "--model", MODEL, "--ssl", "--root-certificates", str(cert))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("\n") == len(TEXTS) and repr(TEXTS[0]) in ok.stdout

    untrusted = _cli("infer", *TEXTS, "--url", grpc_url, "--model", MODEL, "--ssl", "--timeout", "5")
    assert untrusted.returncode == 2, untrusted.stdout + untrusted.stderr
    assert untrusted.stderr.startswith("error: ") and untrusted.stderr.count("\n") == 1, untrusted.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr and "Traceback" not in untrusted.stderr

    plain = _cli("infer", *TEXTS, "--url", grpc_url, "--model", MODEL, "--timeout", "5")
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1, plain.stdout + plain.stderr
    assert plain.stderr.rstrip().endswith("(if the server uses TLS, add --ssl)"), plain.stderr


@pytest.mark.e2e
def test_gateway_beside_a_tls_server_reaches_it_over_grpc_tls(tls_server) -> None:
    import json
    import urllib.request

    _, _, seen = tls_server
    base = next(line for line in seen if "gateway  http://" in line).split("gateway  ", 1)[1].split()[0]
    with urllib.request.urlopen(f"{base}/v1/models", timeout=30) as response:
        models = [model["id"] for model in json.loads(response.read())["data"]]
    assert MODEL in models
    request = urllib.request.Request(f"{base}/predict", data=json.dumps({"inputs": TEXTS[0]}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    assert answer and all({"label", "score"} <= set(item) for item in answer), answer


@pytest.mark.e2e
def test_cli_verify_and_perf_over_grpc_tls(tls_server, certificate, tiny_checkpoint, tmp_path: Path) -> None:
    grpc_url, _, _ = tls_server
    cert, _ = certificate
    tls = ("--ssl", "--root-certificates", str(cert))
    verify = _cli("verify", "--model", MODEL, "--protocol", "grpc", "--grpc-url", grpc_url,
                  "--checkpoint", str(tiny_checkpoint("bert")), *tls, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    perf = _cli("perf", "--model", MODEL, "--grpc-url", grpc_url, "--concurrency", "1", "--window", "0.5",
                "--warmup", "0", "--stable-windows", "1", "--max-windows", "1", "-o", str(tmp_path), *tls,
                timeout=300)
    assert perf.returncode == 0, perf.stdout + perf.stderr
    rows = (tmp_path / "sweep_grpc_b1.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].startswith("1,"), rows  # the header and concurrency 1


@pytest.mark.e2e
def test_mutual_tls_needs_the_client_certificate(tls_repository: Path, certificate, client_certificate) -> None:
    cert, key = certificate
    client_cert, client_key = client_certificate
    config = ServerConfig(tls_repository, http_port=0, grpc_port=0, metrics_port=0, grpc_use_ssl_mutual=True,
                          grpc_server_cert=cert, grpc_server_key=key, grpc_root_cert=client_cert)
    with LocalTritonServer(config).start(ready_timeout_s=240) as server:
        with Client(server.grpc_url, model=MODEL, ssl=True, root_certificates=cert, private_key=client_key,
                    certificate_chain=client_cert, timeout_s=30) as client:
            assert len(client.infer(TEXTS)) == 2
        with Client(server.grpc_url, model=MODEL, ssl=True, root_certificates=cert, timeout_s=10) as anonymous:
            with pytest.raises(ServerUnavailableError):
                anonymous.infer(TEXTS)
