"""Reliability against the real server: sustained mixed load, a killed python-backend stub,
malformed requests at the protocol level, and loopback-only listening sockets.

Bounded in time (a few seconds of load each); the figures are printed (run with -s)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from conftest import SENTIMENT, TOPICS
from hf2triton.export.parity import PARITY_TEXTS
from hf2triton.pipeline import ExportOptions, export_checkpoint
from hf2triton.serving import free_port
from load import Load, single_answers
from stubs import stubs_of

pytestmark = pytest.mark.e2e
LOAD_SECONDS = 6.0


def urls(server) -> dict[str, str]:
    return {"grpc": server.grpc_url, "http": server.http_url}


def check_answers(load: Load, reference: list[np.ndarray]) -> int:
    """Every loaded answer equals the text's single-request answer; returns texts checked."""
    checked = 0
    for outcome in load.outcomes:
        for index, answer in zip(outcome.texts, outcome.answers):
            assert np.allclose(answer, reference[index], atol=1e-4), (index, answer, reference[index])
            checked += 1
    return checked


def latency_ms(load: Load, quantile: float) -> float:
    return 1e3 * float(np.quantile([o.seconds for o in load.outcomes if o.error is None], quantile))


def test_sustained_mixed_load_answers_like_single_requests(server):
    sentiment_texts = list(PARITY_TEXTS)
    topic_texts = [t for t in PARITY_TEXTS if len(t.encode()) <= 2000]  # TOPICS allows 2000 bytes per text
    sentiment_ref = single_answers(server.grpc_url, "grpc", SENTIMENT, sentiment_texts)
    topic_ref = single_answers(server.http_url, "http", TOPICS, topic_texts)
    with Load(urls(server), SENTIMENT, sentiment_texts, clients=4, max_batch=6, seed=1) as sentiment, \
            Load(urls(server), TOPICS, topic_texts, clients=4, max_batch=12, seed=2) as topics:
        time.sleep(LOAD_SECONDS)
    for load in (sentiment, topics):
        assert not load.failures, load.failures[0].error
        assert {o.protocol for o in load.outcomes} == {"grpc", "http"}
        assert len({len(o.texts) for o in load.outcomes}) > 3  # mixed batch sizes
    checked = check_answers(sentiment, sentiment_ref) + check_answers(topics, topic_ref)
    print(f"\nsustained load {LOAD_SECONDS:.0f} s, 8 clients (4 gRPC + 4 HTTP) over 2 models: "
          f"{len(sentiment.outcomes) + len(topics.outcomes)} requests, {checked} texts, 0 failed; "
          f"{SENTIMENT} p50 {latency_ms(sentiment, 0.5):.0f} ms p99 {latency_ms(sentiment, 0.99):.0f} ms, "
          f"{TOPICS} p50 {latency_ms(topics, 0.5):.0f} ms p99 {latency_ms(topics, 0.99):.0f} ms")


@pytest.fixture(scope="module")
def small_repository(tiny_checkpoint, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kill") / "repo"
    from hf2triton.repository import ServingOptions

    export_checkpoint(ExportOptions(checkpoint=tiny_checkpoint("bert"), output_dir=root, name="clf",
                                    serving=ServingOptions(layout="ensemble")))  # a step's stub gets killed
    return root


def start_serve(repository: Path, ports: dict[str, int], log: Path) -> subprocess.Popen:
    """``hf2triton serve`` as an operator runs it (health watch on by default)."""
    command = [sys.executable, "-m", "hf2triton.cli", "serve", "--model-repository", str(repository),
               "--http-port", str(ports["http"]), "--grpc-port", str(ports["grpc"]),
               "--metrics-port", str(ports["metrics"]), "--log-file", str(log)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    env.pop("TRITON_ADMIN_KEY", None)
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def test_killed_stub_is_detected_and_serve_restarts_the_server(small_repository, tmp_path):
    texts = ["good", "a terrible, boring film", "fine " * 30]
    ports = {name: free_port() for name in ("http", "grpc", "metrics")}
    process = start_serve(small_repository, ports, tmp_path / "tritonserver.log")
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)
    reader.start()
    addresses = {"grpc": f"127.0.0.1:{ports['grpc']}", "http": f"127.0.0.1:{ports['http']}"}
    try:
        reference = single_answers(addresses["grpc"], "grpc", "clf", texts)
        with Load(addresses, "clf", texts, clients=4) as load:
            time.sleep(1.5)
            victims = stubs_of(small_repository, "clf_model")
            assert victims, "no model-step stub found"
            killed_at = time.monotonic()
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
            deadline = killed_at + 60
            while not recovered(load, killed_at):
                assert time.monotonic() < deadline, "the server did not recover within 60 s:\n" + "".join(stderr)
                time.sleep(0.2)
            time.sleep(1.0)
        after = single_answers(addresses["grpc"], "grpc", "clf", texts)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=10)
    log = "".join(stderr)
    # Either the watch sees the dead stub, or tritonserver aborts first (the stub died holding
    # the python backend's shared-memory mutex: boost lock_exception); both are restarted.
    assert ("stub(s) died: clf_model version 1 instance clf_model_0_0" in log
            or "tritonserver died of SIGABRT" in log), log
    assert "restarts tritonserver on the same ports" in log and "ready again after" in log
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(after, reference))
    failed = load.failures
    assert all(o.started + o.seconds >= killed_at for o in failed)  # nothing failed before the kill
    check_answers(load, reference)
    good_after = [o for o in load.outcomes if o.error is None and o.started > killed_at]
    recovery = min(o.started + o.seconds for o in good_after) - killed_at
    window = max(o.started + o.seconds for o in failed) - min(o.started + o.seconds for o in failed)
    print(f"\nkilled stub: {len(load.outcomes)} requests from 4 clients (50 ms back-off after a failure), "
          f"{len(failed)} failed over {window:.1f} s (stub unhealthy: "
          f"{sum('not healthy' in f.error for f in failed)}, connection refused/closed while restarting: "
          f"{sum('not healthy' not in f.error for f in failed)}); first good answer {recovery:.1f} s after the "
          "kill; `hf2triton serve` restarted tritonserver once")


def recovered(load: Load, since: float) -> bool:
    """An answer arrived for a request sent after the last failure, which came after ``since``."""
    failures = [o.started + o.seconds for o in load.failures]
    if not failures:
        return False
    last = max(failures)
    return any(o.error is None and o.started > last for o in load.outcomes)


# --------------------------------------------------------------------------- protocol-level bad input


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def v2_body(data, datatype="BYTES", shape=None) -> bytes:
    shape = shape if shape is not None else [len(data), 1]
    return json.dumps({"inputs": [{"name": "TEXT", "datatype": datatype, "shape": shape, "data": data}]}).encode()


# Triton 2.51 answers a body it cannot parse as a request with HTTP 500 (and a clear message).
UNPARSABLE = (400, 500)
BAD_HTTP = {
    "malformed JSON": (f"models/{TOPICS}/infer", b'{"inputs": [{"name": "TEXT", ', "failed to parse"),
    "not an object": (f"models/{TOPICS}/infer", b"[1, 2, 3]", "unable to parse 'inputs'"),
    "wrong datatype": (f"models/{TOPICS}/infer", v2_body([1, 2], "INT32"), "data-type is 'INT32'"),
    "wrong shape": (f"models/{TOPICS}/infer", v2_body(["a", "b", "c", "d"], shape=[2, 2]), "shape"),
    "data does not fit the shape": (f"models/{TOPICS}/infer", v2_body(["a"], shape=[3, 1]), "expected"),
    "unknown input": (f"models/{TOPICS}/infer",
                      json.dumps({"inputs": [{"name": "TXT", "datatype": "BYTES", "shape": [1, 1],
                                              "data": ["a"]}]}).encode(), "unexpected inference input"),
    "unknown model": ("models/no_such_model/infer", v2_body(["a"]), "unknown model"),
    "unknown version": (f"models/{TOPICS}/versions/7/infer", v2_body(["a"]), "version 7"),
    "oversize body (8 MiB text)": (f"models/{TOPICS}/infer", v2_body(["x" * (8 << 20)]), "over the limit"),
    "too many texts": (f"models/{TOPICS}/infer", v2_body(["a"] * 9), "batch-size must be <= 8"),
}


@pytest.mark.parametrize("case", sorted(BAD_HTTP))
def test_bad_http_requests_get_clear_errors_and_the_server_keeps_serving(server, case):
    path, body, expected = BAD_HTTP[case]
    status, text = post(f"{server.http_base_url}/v2/{path}", body)
    assert status in (UNPARSABLE if case in ("malformed JSON", "not an object") else (400, 404)), (status, text)
    assert expected.lower() in json.loads(text)["error"].lower(), text
    status, text = post(f"{server.http_base_url}/v2/models/{TOPICS}/infer", v2_body(["still serving"]))
    assert status == 200, text


def grpc_input(data: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("TEXT", list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return tensor


BAD_GRPC = {
    "wrong datatype": (TOPICS, "", lambda: grpc_input(np.ones((1, 1), np.float32), "FP32"), "data-type is 'FP32'"),
    "wrong shape": (TOPICS, "", lambda: grpc_input(np.array([[b"a", b"b"]], dtype=object), "BYTES"), "shape"),
    "unknown model": ("no_such_model", "", lambda: grpc_input(np.array([[b"a"]], dtype=object), "BYTES"),
                      "unknown model"),
    "unknown version": (TOPICS, "7", lambda: grpc_input(np.array([[b"a"]], dtype=object), "BYTES"), "version 7"),
    "oversize text": (TOPICS, "", lambda: grpc_input(np.array([[b"x" * (8 << 20)]], dtype=object), "BYTES"),
                      "over the limit"),
    "invalid UTF-8": (TOPICS, "", lambda: grpc_input(np.array([[b"\xff\xfe"]], dtype=object), "BYTES"),
                      "not valid UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_GRPC))
def test_bad_grpc_requests_get_clear_errors_and_the_server_keeps_serving(server, case):
    model, version, make_input, expected = BAD_GRPC[case]
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [make_input()], model_version=version)
    assert caught.value.status() in ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND",
                                     "StatusCode.UNAVAILABLE"), caught.value
    assert expected_in(caught.value, expected)
    ok = client.infer(TOPICS, [grpc_input(np.array([[b"still serving"]], dtype=object), "BYTES")])
    assert ok.as_numpy("SCORES").shape == (1, 4)


def expected_in(error: InferenceServerException, expected: str) -> bool:
    return expected.lower() in str(error.message()).lower()


# --------------------------------------------------------------------------- security defaults


def listening_addresses(pid: int) -> set[str]:
    """Local addresses of the TCP sockets process ``pid`` listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add(decode_address(fields[1].split(":")[0]))
    return found


def decode_address(hex_address: str) -> str:
    """/proc/net/tcp{,6} addresses: little-endian IPv4, or IPv6 (IPv4-mapped shown as IPv4)."""
    if len(hex_address) == 32:
        if hex_address.startswith("0000000000000000FFFF0000"):
            hex_address = hex_address[24:]
        else:
            return "::1" if hex_address == "00000000000000000000000001000000" else hex_address
    return ".".join(str(int(hex_address[i:i + 2], 16)) for i in (6, 4, 2, 0))


def test_local_server_listens_on_loopback_only(server):
    assert listening_addresses(server.pid) == {"127.0.0.1"}
