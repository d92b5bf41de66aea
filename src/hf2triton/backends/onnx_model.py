"""Model step, portable flavour: the exported ONNX file run by ONNX Runtime inside a
python-backend model, so the ensemble runs on a tritonserver that has only the
python backend (the bundled CPU server).

Ragged flavour (``max_batch_tokens`` > 0; the inputs allow ragged batches, so Triton
merges requests of any length): all texts of all queued requests are sorted by length
and run in the cheapest sub-batches (cut where padding costs more than another call,
``batching.plan_batches``) of at most ``max_batch_tokens`` positions; each
request gets back its own rows at its own width (:func:`run_ragged`). Otherwise
requests that share a shape (the tokenizer pads to buckets) share one ONNX Runtime call.

A version exported with a packed graph (``PACKED_FILE``) runs every row as a text of its
own and packs short texts into shared rows where that costs less than padding
(:func:`run_packed`).

Any client can call this step directly, so each request is checked on its own
(dtype, rank, shapes, id ranges, positions; :func:`check_feed`) and a bad one gets
its own error while its batch-mates get their answers; if a merged run still raises,
its requests are run one by one so only the culprit fails.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

try:  # as hf2triton.backends.onnx_model, or as "<version>.model" inside tritonserver's stub
    from . import batching
except ImportError:  # imported as a top-level module: batching.py sits beside this file
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import batching  # type: ignore[no-redef]

try:  # only importable inside tritonserver's python stub
    import triton_python_backend_utils as pb_utils
except ImportError:  # pragma: no cover - exercised outside Triton
    pb_utils = None

logger = logging.getLogger(__name__)

PACKED_FILE = "model.packed.onnx"  # a version's packed graph (``batching.PACKED_INPUTS``), loaded instead of onnx_file


class RequestError(ValueError):
    """A request's tensors are unusable; the message names the tensor, the problem and the limit."""


@dataclass(frozen=True)
class InputLimits:
    """What the model accepts; 0 means unknown (not checked). Written by the repository writer."""

    vocab_size: int = 0
    type_vocab_size: int = 0
    max_length: int = 0  # positions per text
    pad_id: int = 0  # the id the ragged flavour pads rows with

    @classmethod
    def from_json(cls, text: str) -> "InputLimits":
        raw = json.loads(text)
        return cls(*(int(raw.get(key, 0)) for key in ("vocab_size", "type_vocab_size", "max_length", "pad_id")))

    def to_json(self) -> str:
        return json.dumps({"vocab_size": self.vocab_size, "type_vocab_size": self.type_vocab_size,
                           "max_length": self.max_length, "pad_id": self.pad_id})


def check_range(name: str, array: np.ndarray, limit: int, what: str) -> None:
    """Every value must lie in 0..limit-1 (limit 0: unknown, only negatives are refused)."""
    outside = ((array < 0) | (array >= limit)) if limit else array < 0
    if outside.any():
        allowed = f"0..{limit - 1}" if limit else "0 or more"
        raise RequestError(f"{name} holds {int(array[outside][0])}, outside {what} ({allowed})")


def check_feed(feed: dict[str, np.ndarray], limits: InputLimits) -> None:
    """Refuse a request the model cannot answer correctly, naming the problem and the limit."""
    shapes = {}
    for name, array in feed.items():
        if array.dtype != np.int64:
            raise RequestError(f"{name} must be INT64, got {array.dtype}")
        if array.ndim != 2:
            raise RequestError(f"{name} must have shape [batch, sequence], got {list(array.shape)}")
        shapes[name] = array.shape
    if len(set(shapes.values())) > 1:
        raise RequestError(f"inputs must have one shape, got {', '.join(f'{n} {list(s)}' for n, s in shapes.items())}")
    rows, length = next(iter(shapes.values()))
    if rows < 1 or length < 1:
        raise RequestError(f"inputs must hold at least one text of one token, got shape {[rows, length]}")
    if limits.max_length and length > limits.max_length:
        raise RequestError(f"sequence length {length} is over the model's limit of {limits.max_length} positions")
    if "input_ids" in feed:
        check_range("input_ids", feed["input_ids"], limits.vocab_size, "the vocabulary")
    if "token_type_ids" in feed:
        check_range("token_type_ids", feed["token_type_ids"], limits.type_vocab_size, "the token types")
    if "attention_mask" in feed and not np.isin(feed["attention_mask"], (0, 1)).all():
        raise RequestError("attention_mask must hold only 0 and 1")


SERVED_SPIN_US = 50  # how long a served session's idle thread waits for work before it sleeps

# ONNX Runtime fusions every session leaves out. SkipLayerNormalization (ORT 1.32, AVX-512):
# dynamic-int8 all-MiniLM-L6-v2 at batch 32 ran 1.89-1.94x fp32 with it and 2.17-2.18x
# with Add + LayerNormalization instead; fp32 within 2 % either way (batch 1-32, length 16-128).
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def create_session(model_path: str | Path, intra_op_threads: int = 0, spinning: bool = True,
                   save_optimized: Path | None = None) -> ort.InferenceSession:
    """A CPU session. ``spinning=False`` for served steps: their idle threads wait at most
    ``SERVED_SPIN_US`` µs for the next task of a run and stop when the run ends.

    Served steps share the cores with the tokenizer, Triton and other instances. Threads
    that spin while idle (ONNX Runtime's default) take those cores: one fused instance of
    two threads served 126 -> 177 texts/s at c16 without spinning. Not spinning at all
    costs a thread wake-up per operator: one text on two threads took 4.23 ms instead of
    3.57 with the brief spin, which also used the least CPU (``perf/spin_policy.py``).
    ``save_optimized``: where to write the graph ONNX Runtime runs (after its fusions).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = intra_op_threads  # 0 = one per core
    if save_optimized is not None:
        options.optimized_model_filepath = str(save_optimized)
    if not spinning:
        options.add_session_config_entry("session.intra_op.spin_duration_us", str(SERVED_SPIN_US))
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(DISABLED_OPTIMIZERS))


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def threads_per_instance(configured: int, instances: int, cores: int | None = None) -> int:
    """ONNX Runtime threads for one model instance: as configured, or (0) the cores shared among instances.

    Measured on 2 shared cores: two instances of one thread each served 1.3–2x the
    throughput of one instance of two threads, whose threads stall when another process
    takes a core.
    """
    if configured > 0:
        return configured
    return max(1, (cores or usable_cores()) // max(1, instances))


LONE_TEXT_MAX_BYTES = 512 * 2**20  # above this, auto does not hold a second copy of the weights


def lone_text_threads(configured: int, instance_threads: int, model_bytes: int, cores: int | None = None) -> int:
    """Threads of the second session that runs an execution holding one text; 0 = none.

    A lone request (nothing else queued: low load) would otherwise run on one instance's
    share of the cores while the others idle. Measured on 2 cores, fused model: p50 at c1
    10.3 -> 7.6 ms. Used only while the other instances are idle (:class:`CoreGate`).
    """
    wanted = configured or (cores or usable_cores())
    if wanted <= max(1, instance_threads):
        return 0
    if not configured and model_bytes > LONE_TEXT_MAX_BYTES:
        return 0
    return wanted


def model_bytes(model_path: Path) -> int:
    """The ONNX file and its external-data files beside it (what a session loads)."""
    folder = model_path.parent
    data = [p for p in folder.iterdir() if p.is_file() and p.suffix not in (".py", ".json", ".onnx") and
            p.name != "tokenizer.json"] if folder.is_dir() else []
    return model_path.stat().st_size + sum(p.stat().st_size for p in data)


def lone_text_session(model_path: Path, configured: int, instance_threads: int) -> ort.InferenceSession | None:
    threads = lone_text_threads(configured, instance_threads, model_bytes(model_path))
    if not threads:
        return None
    logger.info("a lone text runs on a second session of %d threads", threads)
    return create_session(model_path, threads, spinning=False)


class CoreGate:
    """Lets a lone text take every core only while no other instance of the model is executing.

    Every execution holds a shared ``flock`` on one file per model (each instance opens it);
    a lone text runs on the lone-text session only if it gets the lock exclusively at once.
    Unconditionally, a lone text's threads took the cores of the other instance's execution:
    two fused instances of one thread served 196 / 240 texts/s at c16 / c64 that way and
    214 / 247 without a lone-text session (``perf/cpu_breakdown.py``). The kernel drops the
    locks of a stub that dies.
    """

    def __init__(self, lock_path: Path):
        self.lock_path = lock_path
        self._fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)

    @contextmanager
    def execution(self, lone: bool) -> Iterator[bool]:
        """Held around one execution; yields whether it may run on every core."""
        if lone:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # another instance is executing: stay on this instance's threads
            else:
                try:
                    yield True
                finally:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)
                return
        fcntl.flock(self._fd, fcntl.LOCK_SH)  # waits only for a lone text in flight (one call)
        try:
            yield False
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


def core_gate(args: dict) -> CoreGate | None:
    """The gate shared by the instances of the model ``initialize(args)`` loads; None if no lock file can be made."""
    folder = hashlib.sha256(str(Path(args["model_repository"]).resolve()).encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f"hf2triton-{args['model_name']}-{folder}.lock"
    try:
        return CoreGate(path)
    except OSError as exc:
        logger.warning("no lone-text session: cannot open the lock file %s the instances share (%s)", path, exc)
        return None


class LoneText:
    """A model instance's sessions: its own threads, plus every core for a lone text when the gate allows."""

    def __init__(self, session: ort.InferenceSession, lone_session: ort.InferenceSession | None, args: dict):
        self.session = session
        self.gate = core_gate(args) if lone_session is not None else None
        self.lone_session = lone_session if self.gate is not None else None

    @contextmanager
    def session_for(self, lone: bool) -> Iterator[ort.InferenceSession]:
        if self.gate is None:
            yield self.session
            return
        with self.gate.execution(lone) as every_core:
            yield self.lone_session if every_core else self.session


def served_sessions(version_dir: Path, params: dict[str, str], threads: int, args: dict) -> tuple[LoneText, int]:
    """A served model's sessions and, when its version holds a packed graph (``PACKED_FILE``,
    loaded instead of ``onnx_file``), the row width it packs to (``pack_tokens`` 0: one text
    per row); else 0."""
    model_path, packed_rows = version_dir / params.get("onnx_file", "model.onnx"), 0
    if (version_dir / PACKED_FILE).is_file():  # this version was exported with a packed graph
        model_path, packed_rows = version_dir / PACKED_FILE, max(int(params.get("pack_tokens", "0")), 1)
    sessions = LoneText(create_session(model_path, threads, spinning=False),
                        lone_text_session(model_path, int(params.get("lone_text_threads", "1")), threads), args)
    return sessions, packed_rows


def instance_count(config: dict) -> int:
    return sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1


def group_by_shape(feeds: list[dict[str, np.ndarray]]) -> dict[tuple, list[int]]:
    """Indices of requests whose inputs have identical shapes (they can share one run)."""
    groups: dict[tuple, list[int]] = {}
    for index, feed in enumerate(feeds):
        key = tuple(array.shape[1:] for array in feed.values())
        groups.setdefault(key, []).append(index)
    return groups


def run_batched(
    session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]], output_names: list[str]
) -> list:
    """Run every request's feed, one session call per shape group; outputs in request order.

    A request's entry is its list of outputs, or the exception its own run raised: when
    a merged run fails, its requests are run one at a time so only the culprit fails.
    """
    results: list = [None] * len(feeds)
    for indices in group_by_shape(feeds).values():
        names = feeds[indices[0]].keys()
        merged = {name: np.concatenate([feeds[i][name] for i in indices]) for name in names}
        try:
            outputs = session.run(output_names, merged)
        except Exception:  # noqa: BLE001 - find the culprit below, whatever ONNX Runtime raised
            logger.exception("a batched run of %d requests failed; retrying them one by one", len(indices))
            for i in indices:
                results[i] = run_one(session, feeds[i], output_names)
            continue
        sizes = np.cumsum([len(next(iter(feeds[i].values()))) for i in indices])[:-1]
        for position, request_index in enumerate(indices):
            results[request_index] = [np.split(out, sizes)[position] for out in outputs]
    return results


def run_one(session: ort.InferenceSession, feed: dict[str, np.ndarray], output_names: list[str]):
    try:
        return session.run(output_names, feed)
    except Exception as exc:  # noqa: BLE001 - becomes this request's error response
        return exc


def row_lengths(mask: np.ndarray) -> np.ndarray:
    """Positions each row needs: up to its last attended token (at least one)."""
    attended = mask != 0
    last = mask.shape[1] - np.argmax(attended[:, ::-1], axis=1)
    return np.where(attended.any(axis=1), last, 1)


def input_names(session: ort.InferenceSession) -> list[str]:
    return [node.name for node in session.get_inputs()]


def fit(array: np.ndarray, width: int, fill: int | float = 0) -> np.ndarray:
    """``array`` cut or padded with ``fill`` along its first axis to ``width``."""
    if array.shape[0] >= width:
        return array[:width]
    padding = np.full((width - array.shape[0], *array.shape[1:]), fill, dtype=array.dtype)
    return np.concatenate([array, padding])


def request_rows(feeds: list[dict[str, np.ndarray]]) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Every row of every request as (request, row), and the positions each row needs."""
    owners, lengths = [], []
    for i, feed in enumerate(feeds):
        rows, width = next(iter(feed.values())).shape
        owners += [(i, r) for r in range(rows)]
        lengths.append(row_lengths(feed["attention_mask"]) if "attention_mask" in feed else np.full(rows, width))
    return owners, np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)


def run_ragged(
    session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]], output_names: list[str],
    sequence_outputs: set[str], max_batch_tokens: int, pad_id: int = 0,
) -> list:
    """Every row of every request, sorted by length, in sub-batches under a token budget.

    Each request's entry is its outputs (those in ``sequence_outputs`` at the request's own
    width, zero past each row's length, where its mask hides them) or the exception its own
    run raised: the requests of a failed sub-batch are rerun one at a time.
    """
    owners, lengths = request_rows(feeds)
    rows: dict[tuple[int, int], list[np.ndarray]] = {}
    failed: set[int] = set()
    for batch in batching.plan_batches(lengths, max_batch_tokens):
        width = int(lengths[batch].max())
        merged = {
            name: np.stack([fit(feeds[i][name][r], width, pad_id if name == "input_ids" else 0)
                            for i, r in (owners[j] for j in batch)])
            for name in feeds[owners[batch[0]][0]]
        }
        try:
            outputs = session.run(output_names, merged)
        except Exception:  # noqa: BLE001 - find the culprit below, whatever ONNX Runtime raised
            logger.exception("a sub-batch of %d rows failed; retrying its requests one by one", len(batch))
            failed.update(owners[j][0] for j in batch)
            continue
        for k, j in enumerate(batch):
            rows[owners[j]] = [out[k] for out in outputs]
    results: list = []
    for i, feed in enumerate(feeds):
        if i in failed:
            results.append(run_one(session, feed, output_names))
            continue
        count, width = next(iter(feed.values())).shape
        results.append([
            np.stack([fit(rows[(i, r)][o], width) if name in sequence_outputs else rows[(i, r)][o]
                      for r in range(count)])
            for o, name in enumerate(output_names)
        ])
    return results


def run_packed(
    session: ort.InferenceSession, feeds: list[dict[str, np.ndarray]], output_names: list[str],
    max_batch_tokens: int, row_tokens: int, isolate: bool = True,
) -> list:
    """:func:`run_ragged` on a packed graph (``PACKED_FILE``): every row of every request is
    a text, run packed where that is cheaper (``batching.pack_calls``). Each request gets its
    outputs per token at its own width, zero past each row's length (a classifier's graph:
    one output row per text), or the exception its own run raised (the requests of a failed
    call are rerun one at a time)."""
    names = input_names(session)
    per_text_graph = batching.TEXT_STARTS in names
    owners, lengths = request_rows(feeds)
    token_ids = [feeds[i]["input_ids"][r, : lengths[k]] for k, (i, r) in enumerate(owners)]
    type_ids = ([feeds[i][batching.TOKEN_TYPES][r, : lengths[k]] for k, (i, r) in enumerate(owners)]
                if batching.TOKEN_TYPES in names else None)
    per_text: dict[int, list[np.ndarray]] = {}
    failed: set[int] = set()
    for rows in batching.pack_calls(lengths, row_tokens, max_batch_tokens):
        batch = batching.packed_batch(token_ids, rows, type_ids=type_ids)
        try:
            outputs = session.run(output_names, batch.feeds_for(names))
        except Exception:  # noqa: BLE001 - find the culprit below, whatever ONNX Runtime raised
            if not isolate:
                raise
            logger.exception("a packed call of %d texts failed; retrying its requests one by one", len(batch.places))
            failed.update(owners[k][0] for k in batch.places)
            continue
        for j, k in enumerate(batch.texts):
            row, start = batch.places[k]
            per_text[k] = [out[j] if per_text_graph else out[row, start : start + int(lengths[k])] for out in outputs]
    results: list = []
    first = 0  # the index of each request's first row in ``owners``
    for i, feed in enumerate(feeds):
        count, width = feed["input_ids"].shape
        if i in failed:
            try:
                results.append(run_packed(session, [feed], output_names, max_batch_tokens, row_tokens, False)[0])
            except Exception as exc:  # noqa: BLE001 - becomes this request's error response
                results.append(exc)
        else:
            texts = [per_text[first + r] for r in range(count)]
            results.append([np.stack([text[o] if per_text_graph else fit(text[o], width) for text in texts])
                            for o in range(len(output_names))])
        first += count
    return results


class TritonPythonModel:
    """The ONNX Runtime model step as a Triton python-backend model."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        threads = threads_per_instance(int(params.get("intra_op_threads", "0")), instance_count(config))
        self.sessions, self.packed_rows = served_sessions(version_dir, params, threads, args)
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        self.limits = InputLimits.from_json(params.get("limits", "{}"))
        self.max_batch_tokens = int(params.get("max_batch_tokens", "0"))  # > 0: the ragged flavour
        self.sequence_outputs = {t["name"] for t in config["output"] if int(t["dims"][0]) == -1}

    def execute(self, requests):
        responses: list = [None] * len(requests)
        feeds, valid = [], []
        for i, request in enumerate(requests):
            feed = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}
            try:
                check_feed(feed, self.limits)
            except RequestError as exc:
                responses[i] = _error_response(str(exc), pb_utils.TritonError.INVALID_ARG)
                continue
            feeds.append(feed)
            valid.append(i)
        lone = len(feeds) == 1 and len(next(iter(feeds[0].values()))) == 1
        with self.sessions.session_for(lone) as session:
            if self.packed_rows:
                results = run_packed(session, feeds, self.output_names, self.max_batch_tokens, self.packed_rows)
            elif self.max_batch_tokens > 0:
                results = run_ragged(session, feeds, self.output_names, self.sequence_outputs,
                                     self.max_batch_tokens, self.limits.pad_id)
            else:
                results = run_batched(session, feeds, self.output_names)
        for i, outputs in zip(valid, results):
            if isinstance(outputs, Exception):
                responses[i] = _error_response(f"model step failed on this request: {outputs}",
                                               pb_utils.TritonError.INTERNAL)
                continue
            tensors = [pb_utils.Tensor(n, np.ascontiguousarray(o)) for n, o in zip(self.output_names, outputs)]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses


def _error_response(message: str, code):
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
