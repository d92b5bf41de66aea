"""Crash-safe export: an export SIGKILLed at any point loses nothing, the next export (and the
server's repository check, through ``recover_repository``) recover; name collisions are refused
before anything is written; stale variants go with their model; sharded checkpoints are
fingerprinted by every shard; the repository root is 0755 whatever the umask."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import checkpoints
from hf2triton.errors import CheckpointError, RepositoryError
from hf2triton.export.checkpoint import fingerprint
from hf2triton.pipeline import ExportOptions, ExportResult, export_checkpoint
from hf2triton.repository import (
    KILL_POINT_ENV,
    KILL_POINTS,
    RepositorySpec,
    ServingOptions,
    recover_repository,
    write_repository,
)
from hf2triton.repository.install import work_dir

NAME = "clf"
MODELS = [NAME, f"{NAME}_model", f"{NAME}_postprocess", f"{NAME}_tokenizer"]
ENSEMBLE = ServingOptions(layout="ensemble")  # the layout with the most folders to keep consistent
EXPORT_SCRIPT = """
import sys
from pathlib import Path
from hf2triton.pipeline import ExportOptions, export_checkpoint
checkpoint, root, name, overwrite, max_length = sys.argv[1:]
from hf2triton.repository import ServingOptions
export_checkpoint(ExportOptions(checkpoint=Path(checkpoint), output_dir=Path(root), name=name,
                                overwrite=overwrite == "overwrite", max_length=int(max_length) or None,
                                serving=ServingOptions(layout="ensemble")))
"""


@pytest.fixture(scope="module")
def base(retrained, tmp_path_factory) -> ExportResult:
    """One real export whose files the write-level tests reuse."""
    root = tmp_path_factory.mktemp("base") / "repo"
    return export_checkpoint(ExportOptions(checkpoint=retrained[0], output_dir=root, name="base", serving=ENSEMBLE))


def spec(base: ExportResult, root: Path, name: str, **changes) -> RepositorySpec:
    changes.setdefault("serving", ENSEMBLE)
    manifest = {"checkpoint": {"fingerprint": base.checkpoint.fingerprint}}
    return RepositorySpec(root, name, base.checkpoint, base.layout.onnx_file, base.tokenizer_json, base.settings,
                          manifest=manifest, **changes)


def killed_export(checkpoint: Path, root: Path, point: str, overwrite: bool = False, max_length: int = 0) -> None:
    scratch = root.parent / "tmp"  # the killed process cannot remove its temporary folder: keep it here
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, KILL_POINT_ENV: point, "TMPDIR": str(scratch)}
    result = subprocess.run(
        [sys.executable, "-c", EXPORT_SCRIPT, str(checkpoint), str(root), NAME,
         "overwrite" if overwrite else "", str(max_length)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == -signal.SIGKILL, f"not killed at {point}: {result.returncode}\n{result.stderr}"


def snapshot(root: Path) -> dict[str, str]:
    """Every file and folder below ``root``: content hash (files) or "dir"."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def versions(root: Path, model: str) -> list[str]:
    return sorted(p.name for p in (root / model).iterdir() if p.is_dir())


def version_one(files: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in files.items() if k.split("/")[1:2] == ["1"]}


def assert_nothing_triton_would_load(root: Path) -> None:
    names = sorted(p.name for p in root.iterdir())
    assert names == MODELS, f"leftovers inside the repository: {names}"


def test_every_kill_point_is_exercised():
    assert KILL_POINTS == ("staging", "journal", "half", "installed", "committed")


def test_killed_exports_leave_the_previous_versions_or_the_new_ones(retrained, tmp_path):
    first, second = retrained
    root = tmp_path / "repo"
    export_checkpoint(ExportOptions(checkpoint=first, output_dir=root, name=NAME, serving=ENSEMBLE))
    before = snapshot(root)
    for point in ("staging", "journal", "half", "installed"):  # adding version 2, killed before its commit
        killed_export(second, root, point)
        assert_nothing_triton_would_load(root)
        assert work_dir(root).exists(), f"{point}: the interrupted export's work folder is where recovery finds it"
        assert recover_repository(root), point
        assert not work_dir(root).exists()
        assert snapshot(root) == before, f"killed at {point}: the previous repository is not intact"

    killed_export(first, root, "half", max_length=64)  # rewriting version 1 in place
    assert_nothing_triton_would_load(root)
    recover_repository(root)
    assert snapshot(root) == before, "killed while rewriting a version: version 1 is not intact"

    killed_export(second, root, "committed")  # after the commit record: the new version is complete
    assert_nothing_triton_would_load(root)
    assert recover_repository(root) == ["finished the cleanup of an export that was stopped after installing"]
    assert all(versions(root, model) == ["1", "2"] for model in MODELS)
    assert (root / NAME / "2" / "hf2triton.json").is_file() and (root / f"{NAME}_model" / "2" / "model.onnx").is_file()


def test_the_next_export_recovers_and_overwrite_is_undone_whole(retrained, tiny_checkpoint, tmp_path):
    first, second = retrained
    root = tmp_path / "repo"
    export_checkpoint(ExportOptions(checkpoint=first, output_dir=root, name=NAME, serving=ENSEMBLE))
    before = snapshot(root)
    killed_export(tiny_checkpoint("electra"), root, "half", overwrite=True)  # whole folders exchanged
    assert_nothing_triton_would_load(root)
    assert snapshot(root) != before
    result = export_checkpoint(ExportOptions(checkpoint=second, output_dir=root, name=NAME, serving=ENSEMBLE))  # recovers first
    assert result.layout.version == 2, "the rolled-back electra export must not count as the previous version"
    assert not work_dir(root).exists()
    assert all(versions(root, model) == ["1", "2"] for model in MODELS)
    assert version_one(snapshot(root)) == version_one(before), "version 1 changed"


@pytest.mark.e2e
def test_a_repository_recovered_after_a_kill_is_served(retrained, tmp_path):
    from hf2triton.serving import LocalTritonServer, ServerConfig, repository_index

    from load import single_answers

    first, second = retrained
    root = tmp_path / "repo"
    export_checkpoint(ExportOptions(checkpoint=first, output_dir=root, name=NAME, serving=ENSEMBLE))
    killed_export(second, root, "half")
    recover_repository(root)  # what `hf2triton serve` runs before starting the server
    config = ServerConfig(root, http_port=0, grpc_port=0, metrics_port=0, log_file=tmp_path / "tritonserver.log")
    with LocalTritonServer(config) as server:
        answers = single_answers(server.grpc_url, "grpc", NAME, ["good", "a terrible, boring film"])
        ready = {(m["name"], m["version"]) for m in repository_index(server) if m.get("state") == "READY"}
    assert len(answers) == 2
    assert ready == {(model, "1") for model in MODELS}


def test_collisions_with_other_models_are_refused_before_anything_is_written(base, tmp_path):
    root = tmp_path / "repo"
    write_repository(spec(base, root, "m_int8_dynamic"))  # a model of its own that a variant name would hit
    write_repository(spec(base, root, "a_tokenizer", serving=ServingOptions(layout="fused")))
    write_repository(spec(base, root, "e"))
    before = snapshot(root)
    with pytest.raises(RepositoryError, match="m_int8_dynamic is the model 'm_int8_dynamic' exported on its own"):
        write_repository(spec(base, root, "m", variants={"int8_dynamic": base.layout.onnx_file}))
    with pytest.raises(RepositoryError, match="a_tokenizer is the model 'a_tokenizer' exported on its own"):
        write_repository(spec(base, root, "a", overwrite=True))
    with pytest.raises(RepositoryError, match="e_model .*is a step of the ensemble e"):
        write_repository(spec(base, root, "e_model", overwrite=True))
    assert snapshot(root) == before
    assert not work_dir(root).exists()


def test_stale_variants_go_with_their_model_and_nothing_else(base, tmp_path):
    root = tmp_path / "repo"
    variants = {"fp16": base.layout.onnx_file, "int8_dynamic": base.layout.onnx_file}
    write_repository(spec(base, root, "m_other"))  # another export whose name starts like m's folders
    write_repository(spec(base, root, "m", variants=variants))
    assert {"m_fp16", "m_model_fp16", "m_int8_dynamic", "m_model_int8_dynamic"} <= {p.name for p in root.iterdir()}
    others = {k: v for k, v in snapshot(root).items() if k.startswith("m_other")}

    def folders() -> list[str]:
        return sorted(p.name for p in root.iterdir() if not p.name.startswith("m_other"))

    write_repository(spec(base, root, "m", overwrite=True))
    assert folders() == ["m", "m_model", "m_postprocess", "m_tokenizer"]
    write_repository(spec(base, root, "m", variants=variants, overwrite=True))
    write_repository(spec(base, root, "m", serving=ServingOptions(layout="fused")))  # layout switch
    assert folders() == ["m"]
    assert {k: v for k, v in snapshot(root).items() if k.startswith("m_other")} == others


def test_repository_root_is_0755_whatever_the_umask(base, tmp_path):
    old = os.umask(0)
    try:
        write_repository(spec(base, tmp_path / "new" / "repo", "m"))
        loose = tmp_path / "loose"
        loose.mkdir(mode=0o777)
        write_repository(spec(base, loose, "m"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new" / "repo").stat().st_mode) == 0o755
    assert stat.S_IMODE(loose.stat().st_mode) == 0o755
    for path in (tmp_path / "new" / "repo").rglob("*"):
        assert not path.stat().st_mode & (stat.S_IWOTH | stat.S_IWGRP), path


def save_sharded(model, destination: Path, source: Path) -> Path:
    model.save_pretrained(destination, max_shard_size="1MB")
    for name in checkpoints.TOKENIZER_FILES:
        shutil.copyfile(source / name, destination / name)
    return destination


def test_a_retrained_sharded_checkpoint_becomes_the_next_version(retrained, tmp_path):
    model = transformers.AutoModelForSequenceClassification.from_pretrained(retrained[0])
    first = save_sharded(model, tmp_path / "sharded-1", retrained[0])
    with torch.no_grad():
        model.bert.encoder.layer[0].output.dense.weight.mul_(0.5)  # a shard other than the head's
    second = save_sharded(model, tmp_path / "sharded-2", retrained[0])
    index = "model.safetensors.index.json"
    assert (first / index).read_bytes() == (second / index).read_bytes(), "the index alone cannot tell them apart"
    assert len(list(first.glob("model-*.safetensors"))) > 1
    assert fingerprint(first) != fingerprint(second)
    root = tmp_path / "repo"
    assert export_checkpoint(ExportOptions(checkpoint=first, output_dir=root, name=NAME, serving=ENSEMBLE)).layout.version == 1
    assert export_checkpoint(ExportOptions(checkpoint=second, output_dir=root, name=NAME, serving=ENSEMBLE)).layout.version == 2

    next(second.glob("model-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="names shards that are not in"):
        fingerprint(second)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_an_error_midway_rolls_back_in_process(base, tmp_path, monkeypatch, exchange):
    """The same rollback as after a kill, for an error (or Ctrl-C) inside the installation; also
    where the kernel cannot exchange two paths and a replacement takes two renames."""
    from hf2triton.repository import install

    root = tmp_path / "repo"
    write_repository(spec(base, root, "m", variants={"fp16": base.layout.onnx_file}))
    before = snapshot(root)

    def stop_at(point: str) -> None:
        if point == "half":
            raise Interrupted(point)

    if not exchange:
        monkeypatch.setattr(install, "_exchange", lambda first, second: False)
    monkeypatch.setattr(install, "crash_point", stop_at)
    for changes in ({"overwrite": True}, {"version": 3}, {"serving": ServingOptions(layout="fused")}):
        with pytest.raises(Interrupted):
            write_repository(spec(base, root, "m", **changes))
        assert snapshot(root) == before, changes
        assert not work_dir(root).exists()
    monkeypatch.setattr(install, "crash_point", lambda point: None)
    assert write_repository(spec(base, root, "m", version=3)).version == 3
    assert versions(root, "m_tokenizer") == ["1", "3"] and versions(root, "m_fp16") == ["1"]


def test_leftovers_of_the_previous_exporter_are_recovered(base, tmp_path):
    """Before the journal, a replaced model was renamed ``.NAME.old`` inside the repository."""
    root = tmp_path / "repo"
    write_repository(spec(base, root, "m"))
    (root / "m_model").rename(root / ".m_model.old")  # killed between its two renames
    shutil.copytree(root / "m", root / ".m.old")  # killed after the move, before the cleanup
    (root / ".notes.old").mkdir()  # not a model folder: left alone
    assert sorted(recover_repository(root)) == ["removed the leftover .m.old", "restored m_model from .m_model.old"]
    assert sorted(p.name for p in root.iterdir()) == [".notes.old", "m", "m_model", "m_postprocess", "m_tokenizer"]
