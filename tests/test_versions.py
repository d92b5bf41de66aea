"""Model versions: the export's version rules, version policy and warm-up in the configs, and
a live server switching from version 1 to 2 under continuous load without a failed request."""

from __future__ import annotations

import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from hf2triton.errors import OptionsError, RepositoryError
from hf2triton.pipeline import ExportOptions, export_checkpoint
from hf2triton.repository import ServingOptions
from hf2triton.serving import LocalTritonServer, ServerConfig, repository_index, watch_and_restart
from hf2triton.repository import VersionPolicy, parse_pbtxt
from load import Load, single_answers

NAME = "clf"
TEXTS = ["good", "a terrible, boring film", "It was fine. " * 10, "Grand café!", "ok " * 40, ""]


def export(checkpoint: Path, root: Path, **options) -> int:
    serving = options.pop("serving", ServingOptions(layout="ensemble"))  # versions of all four models
    result = export_checkpoint(ExportOptions(checkpoint=checkpoint, output_dir=root, name=NAME, serving=serving,
                                             **options))
    return result.layout.version


def config(root: Path, model: str):
    return parse_pbtxt((root / model / "config.pbtxt").read_text())


def test_version_rules(retrained, tiny_checkpoint, tmp_path):
    first, second = retrained
    root = tmp_path / "repo"
    assert export(first, root) == 1
    assert export(first, root) == 1  # the same checkpoint again: rewritten in place
    assert export(second, root) == 2  # another checkpoint, same interface: the next version
    assert export(first, root, version=5) == 5
    with pytest.raises(RepositoryError, match="version 2 .* holds another checkpoint"):
        export(first, root, version=2)
    with pytest.raises(RepositoryError, match="another serving interface .*clf_postprocess differs in"):
        export(tiny_checkpoint("bert", "embeddings"), root)
    for model in (NAME, f"{NAME}_tokenizer", f"{NAME}_model", f"{NAME}_postprocess"):
        assert sorted(p.name for p in (root / model).iterdir() if p.is_dir()) == ["1", "2", "5"]
    assert export(tiny_checkpoint("bert", "embeddings"), root, overwrite=True) == 1
    assert sorted(p.name for p in (root / NAME).iterdir() if p.is_dir()) == ["1"]


def test_version_policy_and_warmup_in_configs(retrained, tmp_path):
    root = tmp_path / "repo"
    export(retrained[0], root,
           serving=ServingOptions(layout="ensemble", version_policy=VersionPolicy.parse("specific:1,3")))
    model = config(root, f"{NAME}_model")
    assert list(model.version_policy.specific.versions) == [1, 3]
    assert list(config(root, NAME).version_policy.specific.versions) == [1, 3]
    buckets = [int(w.name.split("_")[1]) for w in model.model_warmup]
    assert buckets == [16, 32, 64, 128, 256, 512]
    assert all(list(w.inputs["input_ids"].dims) == [b] for w, b in zip(model.model_warmup, buckets))
    assert len(config(root, f"{NAME}_postprocess").model_warmup) == 1  # logits have no sequence axis
    assert config(root, f"{NAME}_tokenizer").model_warmup[0].inputs["TEXT"].zero_data
    # serving knobs may change per version
    export(retrained[1], root, serving=ServingOptions(layout="ensemble", warmup=False))
    assert not config(root, f"{NAME}_model").model_warmup
    assert config(root, f"{NAME}_model").version_policy.latest.num_versions == 1


def test_default_layout_keeps_each_models_layout_across_versions(retrained, tmp_path):
    """--layout auto: a new model is fused and its next checkpoint becomes version 2 of it; a
    model already exported as an ensemble stays one (its versions continue)."""
    fused_root, ensemble_root = tmp_path / "fused", tmp_path / "ensemble"
    assert export(retrained[0], fused_root, serving=ServingOptions()) == 1
    assert export(retrained[1], fused_root, serving=ServingOptions()) == 2
    assert sorted(p.name for p in (fused_root / NAME).iterdir() if p.name.isdigit()) == ["1", "2"]
    assert not (fused_root / f"{NAME}_model").exists()
    export(retrained[0], ensemble_root, serving=ServingOptions(layout="ensemble"))
    assert export(retrained[1], ensemble_root, serving=ServingOptions()) == 2
    assert sorted(p.name for p in (ensemble_root / f"{NAME}_model").iterdir() if p.name.isdigit()) == ["1", "2"]


@pytest.mark.parametrize("text", ["latest:2", "specific:3,1", "all"])
def test_version_policy_round_trips(text):
    assert str(VersionPolicy.parse(str(VersionPolicy.parse(text)))) == str(VersionPolicy.parse(text))


@pytest.mark.parametrize("text", ["latest:0", "newest", "specific:", "specific:a"])
def test_bad_version_policy_is_refused(text):
    with pytest.raises(OptionsError, match="version policy"):
        VersionPolicy.parse(text)


def test_repository_is_not_world_writable_and_has_no_links(retrained, tmp_path):
    import os

    root = tmp_path / "repo"
    old = os.umask(0)
    try:
        export(retrained[0], root)
        export(retrained[1], root)
    finally:
        os.umask(old)
    for path in root.rglob("*"):
        assert not path.is_symlink(), path
        assert not path.stat().st_mode & (stat.S_IWOTH | stat.S_IWGRP), f"{path} is group/world-writable"


ADMIN_KEY = "versions-test-key"
MODE_SETTINGS = {
    "poll": dict(model_control_mode="poll", repository_poll_secs=1),
    # as docker-compose.yml runs it: the operator loads the new version through the restricted API
    "explicit": dict(model_control_mode="explicit", load_models=("*",), restricted_api_key=ADMIN_KEY),
}


def load_through_api(server, config: ServerConfig) -> None:
    """What an operator does in explicit mode: load the steps, then the ensemble (README)."""
    import urllib.request

    for model in (f"{NAME}_tokenizer", f"{NAME}_model", f"{NAME}_postprocess", NAME):
        request = urllib.request.Request(f"{server.http_base_url}/v2/repository/models/{model}/load", data=b"",
                                         method="POST", headers=config.admin_headers())
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200


@pytest.mark.e2e
@pytest.mark.parametrize("mode", sorted(MODE_SETTINGS))
def test_live_server_switches_versions_under_load_without_failures(retrained, tmp_path, mode):
    first, second = retrained
    root = tmp_path / "repo"
    export(first, root)
    server_config = ServerConfig(root, http_port=0, grpc_port=0, metrics_port=0,
                                 log_file=tmp_path / "tritonserver.log", **MODE_SETTINGS[mode])
    with LocalTritonServer(server_config) as server:
        urls = {"grpc": server.grpc_url, "http": server.http_url}
        v1 = single_answers(server.grpc_url, "grpc", NAME, TEXTS)
        stop, restarts = threading.Event(), []  # the health watch must not mistake the swap for a dead stub
        watcher = threading.Thread(target=lambda: restarts.append(watch_and_restart(server, stop, 0.5)))
        watcher.start()
        with Load(urls, NAME, TEXTS, clients=4) as load:
            time.sleep(1.0)
            assert export(second, root) == 2
            written = time.monotonic()
            if mode == "explicit":
                load_through_api(server, server_config)
            deadline = written + 60
            while versions_ready(server) != {"2"}:
                assert time.monotonic() < deadline, f"version 2 was not served alone within 60 s: {repository_index(server)}"
                time.sleep(0.2)
            switched = time.monotonic()
            time.sleep(1.5)
        stop.set()
        watcher.join(timeout=60)
        v2 = single_answers(server.http_url, "http", NAME, TEXTS)
    assert restarts == [0]
    assert not load.failures, f"{len(load.failures)} of {len(load.outcomes)} requests failed: {load.failures[0].error}"
    assert all(not np.allclose(a, b, atol=1e-3) for a, b in zip(v1, v2)), "the versions answer alike"
    before = [o for o in load.outcomes if o.started < written]
    after = [o for o in load.outcomes if o.started > switched]
    assert before and after
    for outcome in load.outcomes:
        for index, answer in zip(outcome.texts, outcome.answers):
            assert np.allclose(answer, v1[index], atol=1e-4) or np.allclose(answer, v2[index], atol=1e-4)
    for outcome in before:
        assert all(np.allclose(a, v1[i], atol=1e-4) for i, a in zip(outcome.texts, outcome.answers))
    for outcome in after:
        assert all(np.allclose(a, v2[i], atol=1e-4) for i, a in zip(outcome.texts, outcome.answers))
    print(f"\nhot reload ({mode}): {len(load.outcomes)} requests ({load.texts_answered()} texts) from 4 clients, "
          f"0 failed; version 2 served alone {switched - written:.1f} s after the export finished")


def versions_ready(server) -> set[str]:
    """Versions READY in all four models (the ensemble chains the newest READY step versions)."""
    index = repository_index(server)
    models = (NAME, f"{NAME}_tokenizer", f"{NAME}_model", f"{NAME}_postprocess")
    per_model = [{m["version"] for m in index if m["name"] == name and m.get("state") == "READY"} for name in models]
    return set.union(*per_model) if len({frozenset(v) for v in per_model}) == 1 else {"mixed"}
