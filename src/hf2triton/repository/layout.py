"""Layout and naming of an export in a repository, and which folders belong to which model.

An export ``NAME`` is the ensemble ``NAME`` over ``NAME_tokenizer`` → ``NAME_model`` →
``NAME_postprocess`` (layout "ensemble"), or one python-backend model ``NAME`` (layout
"fused"). Precision variants are ensembles ``NAME_<variant>`` over ``NAME_model_<variant>``,
sharing the tokenizer and postprocess steps. Only ``NAME`` holds the manifest
(:data:`MANIFEST`): that is how a folder exported as a model of its own is told apart from a
step or variant of another one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from hf2triton import contract
from hf2triton.errors import OptionsError, RepositoryError
from hf2triton.repository.configs import VersionPolicy

log = logging.getLogger(__name__)

BACKENDS = ("python-ort", "onnxruntime", "tensorrt")
# "auto" is fused where the fused model can serve the export, else the ensemble
# (hf2triton.repository.assembly.choose_layout says which and why).
LAYOUTS = ("auto", "ensemble", "fused")
DEFAULT_LAYOUT = "auto"
DEFAULT_PACK_TOKENS = 256  # the widest packed row a model tries (hf2triton.backends.batching.pack_call)
MANIFEST = "hf2triton.json"  # what built it, from which checkpoint: NAME/ (latest export) and NAME/<version>/
CONFIG = "config.pbtxt"


@dataclass(frozen=True)
class ServingOptions:
    """How the served steps batch and how many instances run; defaults measured (README, Performance).

    Two model instances sharing the cores (``intra_op_threads=0``: cores // instances
    threads each, decided where the model is served) beat one instance using every core;
    no queue delay: at concurrency 1 it is pure latency, under load requests queue anyway.
    """

    max_batch_size: int = 32
    tokenizer_instances: int = 1
    model_instances: int = 2
    postprocess_instances: int = 1
    model_queue_delay_us: int = 0
    intra_op_threads: int = 0  # ONNX Runtime threads per model instance; 0 = the cores shared among instances
    layout: str = DEFAULT_LAYOUT  # "ensemble" (three steps), "fused" (one python model) or "auto"
    # For the model step (or the fused model); None: balanced_batch_sizes on python-ort steps.
    preferred_batch_sizes: tuple[int, ...] | None = None
    # Model-step flavour: "python-ort" runs anywhere the python backend does (the bundled
    # CPU server); "onnxruntime" and "tensorrt" use the Triton container's own backends.
    backend: str = "python-ort"
    ort_tensorrt_precision: str | None = None  # onnxruntime flavour: TensorRT EP, "FP16"/"FP32"
    version_policy: VersionPolicy = VersionPolicy()  # which versions Triton serves (default: the newest)
    warmup: bool = True  # model_warmup samples (one per sequence bucket) in the step configs
    # python-ort model step and fused model: texts sorted by length across requests, run in
    # sub-batches of at most this many positions (like TEI's --max-batch-tokens); 0 pads to
    # buckets instead.
    max_batch_tokens: int = 8192
    # python-ort model step and fused model: an execution holding one text (nothing else was
    # queued) runs on a second session with this many threads, so a lone request is not held
    # to one instance's share of the cores. 0 = every usable core when that is more than the
    # instance's threads and the ONNX file is under 512 MiB (the second session holds its own
    # copy of the weights); 1 = no second session.
    lone_text_threads: int = 0
    # python-ort model step and fused model (fp32, every task): the export adds a packed
    # graph (several texts per row, hf2triton.export.packing) and the model packs rows of
    # up to this many tokens where that costs less than padding; 0 = no packed graph,
    # padded sub-batches only.
    pack_tokens: int = DEFAULT_PACK_TOKENS

    def __post_init__(self):
        problems = []
        if self.layout not in LAYOUTS:
            problems.append(f"layout {self.layout!r} is not one of {', '.join(LAYOUTS)}")
        if self.backend not in BACKENDS:
            problems.append(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.layout == "fused" and self.backend != "python-ort":
            problems.append("the fused layout is one python model: it runs ONNX Runtime itself "
                            "(--backend python-ort); use the ensemble layout for the container backends")
        if any(not 1 <= size <= self.max_batch_size for size in self.preferred_batch_sizes or ()):
            problems.append(f"preferred batch sizes {self.preferred_batch_sizes} must lie in 1..{self.max_batch_size}")
        if self.model_queue_delay_us < 0:
            problems.append("the model queue delay must be >= 0 µs")
        if not 1 <= self.max_batch_size <= 4096:
            problems.append(f"max batch size {self.max_batch_size} is outside 1..4096")
        for field_name in ("tokenizer_instances", "model_instances", "postprocess_instances"):
            if getattr(self, field_name) < 1:
                problems.append(f"{field_name.replace('_', ' ')} must be at least 1")
        if self.intra_op_threads < 0:
            problems.append("intra-op threads must be 0 (one per core) or more")
        if self.max_batch_tokens < 0:
            problems.append("max batch tokens must be 0 (pad to buckets) or more")
        if self.pack_tokens < 0:
            problems.append("pack tokens must be 0 (no packed graph) or more")
        if self.lone_text_threads < 0:
            problems.append("lone-text threads must be 0 (every core), 1 (off) or more")
        if problems:
            raise OptionsError("invalid serving options: " + "; ".join(problems))

    def model_batch_sizes(self, rows: int) -> tuple[int, ...]:
        """The model step's (or fused model's) preferred batch sizes, for a step taking ``rows`` per batch."""
        if self.preferred_batch_sizes is not None:
            return self.preferred_batch_sizes
        return balanced_batch_sizes(rows, self.model_instances) if self.backend == "python-ort" else ()


def balanced_batch_sizes(rows: int, instances: int) -> tuple[int, ...]:
    """Preferred sizes that let the instances share a long queue: a quarter, half and all of ``rows``.

    Triton's dynamic batcher gives a free instance the largest preferred size the queue can
    fill, else everything queued. Without preferred sizes the first free instance took the
    whole queue (14 texts at concurrency 16) while the other ran the texts that came back
    one at a time: half the executions held one text, at 10.7 ms against 8.3 per text at
    eight. With these, the fused model served 5-7 % more at c16 and about 1.5 % less at c64
    (README, Performance). Pointless with one instance: it would only split its own queue.
    """
    if instances < 2:
        return ()
    return tuple(sorted({max(rows // 4, 1), max(rows // 2, 1), rows}))


def variant_ensemble(name: str, variant: str) -> str:
    return f"{name}_{variant}"


def variant_model(name: str, variant: str) -> str:
    return f"{name}_model_{variant}"


def numeric_dirs(folder: Path) -> list[int]:
    """Version folders of a model folder (positive whole numbers), unordered."""
    return [int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0]


@dataclass(frozen=True)
class RepositoryLayout:
    root: Path
    name: str
    version: int = 1  # the version this export wrote
    kind: str = "ensemble"  # or "fused": a layout as written, never "auto"
    variants: tuple[str, ...] = ()  # extra ensembles NAME_<variant> over NAME_model_<variant>

    @property
    def steps(self) -> tuple[str, ...]:
        return contract.step_names(self.name) if self.kind == "ensemble" else ()

    @property
    def core_dirs(self) -> tuple[Path, ...]:
        """``NAME`` and its steps: what versions are planned over."""
        return tuple(self.root / n for n in (self.name, *self.steps))

    @property
    def model_dirs(self) -> tuple[Path, ...]:
        extra = [n for v in self.variants for n in (variant_model(self.name, v), variant_ensemble(self.name, v))]
        return (*self.core_dirs, *(self.root / n for n in extra))

    @property
    def stale_dirs(self) -> tuple[Path, ...]:
        """Step folders of the other layout under the same name, removed when this one is written."""
        return () if self.kind == "ensemble" else tuple(self.root / n for n in contract.step_names(self.name))

    @property
    def ensemble_dir(self) -> Path:
        return self.root / self.name

    def _version_file(self, step: int, filename: str) -> Path:
        holder = self.steps[step] if self.steps else self.name
        return self.root / holder / str(self.version) / filename

    @property
    def onnx_file(self) -> Path:
        """The served ONNX file of this version (model step, or the fused model)."""
        return self._version_file(1, "model.onnx")

    @property
    def tokenizer_file(self) -> Path:
        """The served tokenizer.json of this version (tokenizer step, or the fused model)."""
        return self._version_file(0, "tokenizer.json")

    def versions(self) -> tuple[int, ...]:
        """Versions present in every one of the core model folders, ascending."""
        found = [set(numeric_dirs(folder)) for folder in self.core_dirs if folder.is_dir()]
        return tuple(sorted(set.intersection(*found))) if found else ()

    @property
    def manifest(self) -> Path:
        return self.ensemble_dir / MANIFEST


# --- who owns which folder -------------------------------------------------------------------


@dataclass(frozen=True)
class Survey:
    """What a repository holds, for ownership questions: read once, before anything is written."""

    root: Path
    folders: frozenset[str]  # every model folder (non-hidden directory) in the root
    exported: frozenset[str]  # folders with a manifest: models exported under their own name
    ensembles: tuple[tuple[str, tuple[str, ...]], ...]  # ensemble folder → the models its steps call

    def steps_of(self, ensemble: str) -> tuple[str, ...]:
        return dict(self.ensembles).get(ensemble, ())


def survey(root: Path) -> Survey:
    if not root.is_dir():
        return Survey(root, frozenset(), frozenset(), ())
    folders = frozenset(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    exported = frozenset(f for f in folders if (root / f / MANIFEST).is_file())
    ensembles = tuple(sorted((f, steps) for f in folders if (steps := _ensemble_steps(root / f / CONFIG)) is not None))
    return Survey(root, folders, exported, ensembles)


def _ensemble_steps(config_file: Path) -> tuple[str, ...] | None:
    """The models an ensemble config calls, or None when the file is not an ensemble config."""
    from google.protobuf import text_format

    from hf2triton.repository.configs import parse_pbtxt

    try:
        text = config_file.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    if "ensemble" not in text:  # cheap filter: most configs are not ensembles
        return None
    try:
        config = parse_pbtxt(text)
    except (text_format.ParseError, RepositoryError, ValueError):
        return None
    if config.platform != "ensemble":
        return None
    return tuple(step.model_name for step in config.ensemble_scheduling.step)


def owned_folders(found: Survey, name: str) -> frozenset[str]:
    """Existing folders that are steps or variants of the export ``name`` (``name`` itself excluded).

    Steps are ``NAME_tokenizer``/``_model``/``_postprocess`` without a manifest of their own;
    a variant is an ensemble ``NAME_*`` that calls ``NAME_tokenizer``, with its own model step;
    a variant model step no ensemble calls is left over from an interrupted older export.
    """
    mine = {f for f in contract.step_names(name) if f in found.folders and f not in found.exported}
    tokenizer = contract.step_names(name)[0]
    called = {m for _, steps in found.ensembles for m in steps}
    for ensemble, steps in found.ensembles:
        if ensemble != name and ensemble.startswith(f"{name}_") and ensemble not in found.exported \
                and tokenizer in steps:
            mine.add(ensemble)
            mine.update(s for s in steps if s.startswith(variant_model(name, "")) and s in found.folders)
    prefix = variant_model(name, "")
    mine.update(f for f in found.folders if f.startswith(prefix) and f not in called and f not in found.exported)
    return frozenset(mine)


def collisions(found: Survey, name: str, writing: tuple[str, ...]) -> list[str]:
    """Each folder this export would write that belongs to another model, and to which."""
    mine = owned_folders(found, name) | {name}
    problems = []
    for folder in writing:
        if folder not in found.folders:
            continue
        users = [e for e, steps in found.ensembles if folder in steps and e not in mine]
        if folder != name and folder in found.exported:
            problems.append(f"{folder} is the model {folder!r} exported on its own")
        elif folder == name and folder not in found.exported:
            problems.append(f"{folder} was not written by hf2triton as a model of its own")
        elif folder not in mine:
            problems.append(f"{folder} is not a step or variant of {name!r}")
        if users:
            problems.append(f"{folder} is a step of the ensemble {', '.join(users)}")
    return problems


def refuse_collisions(found: Survey, name: str, writing: tuple[str, ...]) -> None:
    problems = collisions(found, name, writing)
    if problems:
        raise RepositoryError(
            f"{found.root} already holds models that this export of {name!r} would overwrite: {'; '.join(problems)}. "
            "Export under another --name, or remove those folders yourself"
        )
