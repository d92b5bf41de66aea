"""sentence-transformers prompts and Matryoshka dimensions on a real tritonserver: served answers
equal ``SentenceTransformer.encode(texts, prompt_name=..., truncate_dim=...)``; bad options get a
400 naming the problem and the server keeps serving. Ensemble and fused layouts."""

import json
import shutil
import urllib.request

import numpy as np
import pytest

from hf2triton.backends.tokenizer import TextInputError, TextOptions, resolve_prompt
from hf2triton.errors import CheckpointError, InvalidInputError
from hf2triton.export.checkpoint import inspect_checkpoint

PROMPTS = {"query": "query: ", "passage": "passage: ", "empty": ""}
TEXTS = ["How do I serve a transformer on Triton?", "Paris is the capital of France.", "", "ok 🎉"]
NAMES = {"ensemble": "minilm_prompts", "fused": "minilm_prompts_fused"}


def prompt_checkpoint(default_model_dir, destination, default_prompt_name="query"):
    """The default model with prompts in config_sentence_transformers.json (weights linked, not copied)."""
    shutil.copytree(default_model_dir, destination, copy_function=lambda src, dst: (
        shutil.copyfile(src, dst) if not src.endswith(".safetensors") else __import__("os").symlink(src, dst)))
    config_file = destination / "config_sentence_transformers.json"
    config = json.loads(config_file.read_text())
    config.update(prompts=PROMPTS, default_prompt_name=default_prompt_name)
    config_file.write_text(json.dumps(config))
    return destination


def test_prompts_are_read_and_checked(default_model_dir, tmp_path):
    checkpoint = inspect_checkpoint(prompt_checkpoint(default_model_dir, tmp_path / "ok"))
    assert dict(checkpoint.prompts) == PROMPTS and checkpoint.default_prompt_name == "query"
    options = TextOptions(prompts=checkpoint.prompts, default_prompt_name="query", embedding_size=384)
    assert resolve_prompt({}, options) == "query: "
    assert resolve_prompt({"prompt_name": "passage", "dimensions": 64}, options) == "passage: "
    with pytest.raises(TextInputError, match=r"unknown prompt_name 'nope'; this model's prompts: empty, passage"):
        resolve_prompt({"prompt_name": "nope"}, options)
    with pytest.raises(TextInputError, match=r"dimensions must be an integer in 1\.\.384"):
        resolve_prompt({"dimensions": 385}, options)
    with pytest.raises(CheckpointError, match="default_prompt_name 'missing' is not one of the prompts"):
        inspect_checkpoint(prompt_checkpoint(default_model_dir, tmp_path / "bad", default_prompt_name="missing"))


@pytest.fixture(scope="module")
def prompt_dir(default_model_dir, tmp_path_factory):
    return prompt_checkpoint(default_model_dir, tmp_path_factory.mktemp("prompts") / "minilm-prompts")


@pytest.fixture(scope="module")
def prompt_server(prompt_dir, tmp_path_factory):
    from hf2triton.pipeline import ExportOptions, export_checkpoint
    from hf2triton.repository import ServingOptions
    from hf2triton.serving import LocalTritonServer, ServerConfig

    root = tmp_path_factory.mktemp("prompt-repository") / "model_repository"
    for layout, name in NAMES.items():
        export_checkpoint(ExportOptions(checkpoint=prompt_dir, output_dir=root, name=name,
                                        serving=ServingOptions(layout=layout)))
    config = ServerConfig(model_repository=root, http_port=0, grpc_port=0, metrics_port=0,
                          log_file=root.parent / "tritonserver.log")
    with LocalTritonServer(config).start(ready_timeout_s=180) as running:
        yield running


@pytest.fixture(scope="module")
def reference(prompt_dir):
    """SentenceTransformer.encode, as the issue states the target."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(prompt_dir), device="cpu")

    def encode(prompt_name=None, truncate_dim=None):
        return model.encode(TEXTS, prompt_name=prompt_name, truncate_dim=truncate_dim, convert_to_numpy=True)

    return encode


def cosines(a, b):
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.e2e
@pytest.mark.parametrize("layout", sorted(NAMES))
def test_served_prompts_and_dimensions_match_sentence_transformers(prompt_server, reference, layout):
    from hf2triton.client import Client

    cases = [(None, None), ("passage", None), ("empty", 128), ("query", 64), (None, 384)]
    for protocol, url in (("grpc", prompt_server.grpc_url), ("http", prompt_server.http_url)):
        with Client(url, protocol=protocol, model=NAMES[layout]) as client:
            info = client.wait_for_model(timeout_s=60)
            assert (info.prompts, info.default_prompt_name) == (tuple(sorted(PROMPTS)), "query")
            for prompt_name, dimensions in cases:
                served = client.embed(TEXTS, prompt_name=prompt_name, dimensions=dimensions)
                expected = reference(prompt_name, dimensions)
                assert served.shape == expected.shape
                assert cosines(served, expected).min() >= 0.9999, (protocol, prompt_name, dimensions)
                np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, rtol=1e-5)  # re-normalised
            # the default prompt really applies: without it the answers differ
            assert cosines(client.embed(TEXTS[:2]), reference("empty")[:2]).max() < 0.999


@pytest.mark.e2e
@pytest.mark.parametrize("layout", sorted(NAMES))
def test_bad_options_get_a_400_and_the_server_keeps_serving(prompt_server, layout):
    from hf2triton.client import Client

    with Client(prompt_server.http_url, protocol="http", model=NAMES[layout]) as client:
        client.wait_for_model(timeout_s=60)
        with pytest.raises(InvalidInputError, match="unknown prompt_name 'nope'"):
            client.embed(TEXTS, prompt_name="nope")
        for dimensions in (385, 10_000):
            with pytest.raises(InvalidInputError, match=r"dimensions must be an integer in 1\.\.384"):
                client.embed(TEXTS, dimensions=dimensions)
        assert client.embed(TEXTS, dimensions=8).shape == (len(TEXTS), 8)


@pytest.mark.e2e
def test_raw_kserve_request_with_parameters(prompt_server, reference):
    """The README's curl example: request parameters in the KServe v2 JSON body."""
    body = {"parameters": {"prompt_name": "passage", "dimensions": 64},
            "inputs": [{"name": "TEXT", "shape": [2, 1], "datatype": "BYTES", "data": TEXTS[:2]}]}
    request = urllib.request.Request(f"http://{prompt_server.http_url}/v2/models/{NAMES['ensemble']}/infer",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        outputs = {o["name"]: o for o in json.loads(response.read())["outputs"]}
    served = np.array(outputs["EMBEDDING"]["data"], dtype=np.float32).reshape(outputs["EMBEDDING"]["shape"])
    assert served.shape == (2, 64)
    assert cosines(served, reference("passage", 64)[:2]).min() >= 0.9999
    body["parameters"]["dimensions"] = 0
    request = urllib.request.Request(request.full_url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as failure:
        urllib.request.urlopen(request, timeout=60)
    assert failure.value.code == 400 and "dimensions must be an integer in 1..384" in failure.value.read().decode()


@pytest.mark.e2e
def test_verify_checks_every_prompt(prompt_server, prompt_dir):
    from hf2triton.client.verify import verify

    report = verify(NAMES["ensemble"], prompt_dir, {"http": prompt_server.http_url})
    assert report.passed, "\n".join(report.table())
    details = " ".join(c.detail for c in report.checks)
    assert all(f"prompt_name={name}" in details for name in ("query", "passage")) and "dimensions=192" in details


@pytest.mark.e2e
def test_async_client_sends_the_options(prompt_server, reference):
    import asyncio

    from hf2triton.client import AsyncClient

    async def embed():
        async with AsyncClient(prompt_server.grpc_url, protocol="grpc", model=NAMES["ensemble"]) as client:
            await client.wait_for_model(timeout_s=60)
            return await client.embed(TEXTS, prompt_name="passage", dimensions=32)

    served = asyncio.run(embed())
    assert cosines(served, reference("passage", 32)).min() >= 0.9999
