"""The support matrix (README "Support matrix"): every supported model type × every task is
exported from a tiny checkpoint, parity-checked, served on one real tritonserver and verified
with ``hf2triton verify`` against transformers (and, for rerankers, sentence-transformers'
``CrossEncoder``). The README's pair-classification column is proven by the
sequence-classification cell: verify checks that model on text pairs as well.

The server runs in explicit model-control mode and loads one cell's ensemble at a time, so
only three python-backend stubs live at once however long the matrix grows.
"""

import json
import re
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

import checkpoints
from hf2triton.export.checkpoint import SUPPORTED_MODEL_TYPES, inspect_checkpoint
from hf2triton.client import Client
from hf2triton.errors import CheckpointError
from hf2triton.export.parity import ENTITY_TEXTS, LONG_TEXT
from hf2triton.pipeline import ExportOptions, export_checkpoint
from hf2triton.client.verify import verify

TASKS = ("embeddings", "sequence-classification", "token-classification", "rerank")
# The README matrix's task columns, in order; pair-classification = the sequence classifier given pairs.
COLUMNS = ("embeddings", "sequence-classification", "pair-classification", "token-classification", "rerank")
# Few but varied: entities, the long text (truncated at 64 tokens), emoji, CJK, combining marks, empty.
MATRIX_TEXTS = (*ENTITY_TEXTS[:2], LONG_TEXT, "Great job 🎉🔥 👍🏽", "这家餐厅 Paris", "Cafe\u0301 re\u0301sume\u0301", "")
MATRIX_MAX_LENGTH = 64
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_matrix() -> dict[str, list[str]]:
    """Rows of the README's support matrix: model_type -> its cells (after the first column)."""
    section = README.read_text().split("### Support matrix", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\|\s*`([a-z0-9-]+)`\s*\|(.*)\|\s*$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def test_every_supported_model_type_has_a_tiny_model_and_a_readme_row(tmp_path):
    missing = [t for t in SUPPORTED_MODEL_TYPES if t not in checkpoints.TINY_CONFIGS]
    assert not missing, f"supported model types without a tiny test model: {missing}"
    rows = readme_matrix()
    header = README.read_text().split("### Support matrix", 1)[1].split("| model_type |", 1)[1].split("\n", 1)[0]
    assert tuple(cell.strip() for cell in header.split("|")[:-2]) == COLUMNS
    supported_rows = [t for t, cells in rows.items() if all(c.startswith("✓") for c in cells[: len(COLUMNS)])]
    assert supported_rows == list(SUPPORTED_MODEL_TYPES), "the README matrix must list exactly the tested types"
    unsupported = [t for t in rows if t not in SUPPORTED_MODEL_TYPES]
    assert unsupported, "the README names at least one family that cannot work, and why"
    for model_type in unsupported:  # a row that cannot work says why, and the export refuses it clearly
        assert "✗" in rows[model_type][0] and len(rows[model_type][-1]) > 20
        folder = tmp_path / model_type
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": ["X"]}))
        with pytest.raises(CheckpointError, match=f"model_type '{model_type}'.*not supported; supported encoders"):
            inspect_checkpoint(folder)


@pytest.fixture(scope="module")
def matrix_server(tmp_path_factory):
    from hf2triton.serving import LocalTritonServer, ServerConfig

    root = tmp_path_factory.mktemp("matrix") / "model_repository"
    root.mkdir()
    config = ServerConfig(model_repository=root, http_port=0, grpc_port=0, metrics_port=0,
                          model_control_mode="explicit", allow_unauthenticated_model_control=True,
                          log_file=root.parent / "tritonserver.log")
    with LocalTritonServer(config).start(ready_timeout_s=180) as running:
        yield running, root


@pytest.mark.e2e
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("model_type", SUPPORTED_MODEL_TYPES)
def test_matrix_cell_is_exported_served_and_verified(matrix_server, tiny_checkpoint, model_type, task):
    server, root = matrix_server
    name = f"{model_type.replace('-', '_')}_{task.split('-')[0]}"
    result = export_checkpoint(ExportOptions(checkpoint=tiny_checkpoint(model_type, task), output_dir=root,
                                             name=name, max_length=MATRIX_MAX_LENGTH))
    assert result.parity.passed and result.parity.truncated_texts >= 1, result.parity.summary()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.load_model(name)
    try:
        report = verify(name, result.checkpoint.path, {"grpc": server.grpc_url, "http": server.http_url},
                        texts=MATRIX_TEXTS)
        with Client(server.grpc_url, model=name) as served:
            pairs = list(MATRIX_TEXTS[::-1]) if task == "rerank" else None
            answers = served.infer(list(MATRIX_TEXTS), text_pair=pairs)
    finally:
        client.unload_model(name, unload_dependents=True)
    assert report.passed, "\n".join(report.table())
    # Classifiers: texts alone and pairs; embedders: texts alone, then asked for half the dimensions
    # (verify's option checks; tiny checkpoints name no prompts).
    runs = {"sequence-classification": 2, "rerank": 1, "embeddings": 2}.get(task, 1)
    assert report.task == task and len(report.checks) == 2 * runs * len(MATRIX_TEXTS)
    if task in ("sequence-classification", "rerank"):  # the pair-classification column, and rerankers
        assert sum(" | " in check.text for check in report.checks) == 2 * len(MATRIX_TEXTS)
    # The comparison can fail: the tiny models' answers differ between texts and tokens.
    if task == "sequence-classification":
        assert len({a.label for a in answers}) >= 2
    if task == "rerank":
        assert len({round(a.score, 3) for a in answers}) >= 2
    if task == "token-classification":
        assert len({e.label for a in answers for e in a.entities}) >= 2
