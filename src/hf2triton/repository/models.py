"""The configs and files of every model of an export: the three steps (or the fused model),
the ensemble tying them, and one ensemble per precision variant. Pure: nothing is written here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from importlib import resources
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as pb

from hf2triton import contract
from hf2triton.backends.fused import STEP_MODULES as FUSED_STEP_MODULES
from hf2triton.backends.fused import AnswerSettings
from hf2triton.backends.onnx_model import PACKED_FILE, InputLimits
from hf2triton.backends.postprocess import EntitySettings
from hf2triton.backends.tokenizer import TextOptions, TokenizerSettings
from hf2triton.engines.check import sidecar_path
from hf2triton.errors import RepositoryError
from hf2triton.export.checkpoint import Checkpoint
from hf2triton.repository.configs import (
    Batching,
    Ensemble,
    EnsembleStep,
    PlatformModel,
    PythonModel,
    Tensor,
    WarmupSample,
    build_ensemble,
    build_platform_model,
    build_python_model,
)
from hf2triton.repository.layout import ServingOptions, variant_ensemble, variant_model
from hf2triton.tasks import HIDDEN

def platform_step(model: PythonModel, serving: ServingOptions, cc_plans: dict[str, str]) -> PlatformModel:
    """The same model step for the container's ONNX Runtime or TensorRT backend."""
    tensorrt = serving.backend == "tensorrt"
    return PlatformModel(
        name=model.name,
        platform="tensorrt_plan" if tensorrt else "onnxruntime_onnx",
        inputs=model.inputs,
        outputs=model.outputs,
        max_batch_size=model.max_batch_size,
        default_model_filename="model.plan" if tensorrt else "model.onnx",
        instance_count=model.instance_count,
        batching=model.batching,
        cc_model_filenames=cc_plans if tensorrt else {},
        ort_tensorrt_precision=None if tensorrt else serving.ort_tensorrt_precision,
        version_policy=model.version_policy,
        warmup=model.warmup,
    )


def int64(name: str) -> Tensor:
    return Tensor(name, "TYPE_INT64", (-1,))


def with_sequence(tensor: Tensor, length: int) -> Tensor:
    """``tensor`` with its variable sequence axis (-1) fixed to ``length``, for warm-up data."""
    return Tensor(tensor.name, tensor.data_type, tuple(length if d == -1 else d for d in tensor.dims))


def bucket_warmup(inputs: tuple[Tensor, ...], buckets: tuple[int, ...]) -> tuple[WarmupSample, ...]:
    """One zero-filled sample per sequence bucket (one sample when no input has a sequence axis).

    The tokenizer pads every request to a bucket, so these are exactly the shapes the
    model and postprocess steps will see; each first run of a shape is slow in ONNX Runtime.
    """
    if not any(-1 in t.dims for t in inputs):
        return (WarmupSample("warmup", inputs),)
    return tuple(WarmupSample(f"bucket_{b}", tuple(with_sequence(t, b) for t in inputs)) for b in buckets)


def postprocess_settings(checkpoint: Checkpoint, entities: EntitySettings | None) -> dict:
    settings = {
        "pooling": checkpoint.pooling.mode,
        "normalize": checkpoint.pooling.normalize,
        "labels": list(checkpoint.labels),
        "multi_label": checkpoint.multi_label,
        "activation": checkpoint.activation,
    }
    if entities is not None:
        settings.update(asdict(entities), labels=list(entities.labels), ignore_labels=list(entities.ignore_labels))
    return settings


def pair_parameters(task) -> dict[str, str]:
    """How a pair-taking tokenizer reads an empty ``TEXT_PAIR`` (see ``Task.empty_pair_alone``)."""
    return {"empty_pair_alone": json.dumps(task.empty_pair_alone)} if task.text_pairs else {}


def step_models(
    name: str,
    checkpoint: Checkpoint,
    settings: TokenizerSettings,
    serving: ServingOptions,
    entities: EntitySettings | None = None,
    text_options: TextOptions = TextOptions(),
) -> tuple[PythonModel, PythonModel, PythonModel]:
    """The three python-backend step configs for ``checkpoint``'s task.

    Windowed (``text_options.windowed``): the tokenizer sends one row per window plus each row's text
    index and source text, so the model and postprocess steps take up to ``max_windows`` rows
    per text.
    """
    tokenizer_name, model_name, postprocess_name = contract.step_names(name)
    task = checkpoint.task
    width = checkpoint.hidden_size if task.name == "embeddings" else len(checkpoint.labels)
    token_tensors = tuple(int64(n) for n in checkpoint.input_names)
    text = Tensor(contract.INPUT_TEXT, "TYPE_STRING", (1,))
    # Pair-capable tasks take an optional second text per row, tokenized with it (tokenizer(text, text_pair)).
    texts = (text, Tensor(contract.INPUT_TEXT_PAIR, "TYPE_STRING", (1,), optional=True)) if task.text_pairs else (text,)
    alignment = (
        (Tensor(contract.TENSOR_OFFSETS, "TYPE_INT64", (-1, 2)), int64(contract.TENSOR_SPECIAL_TOKENS))
        if task.token_alignment
        else ()
    )
    truncated = Tensor(contract.OUTPUT_TRUNCATED, "TYPE_BOOL", (1,))
    model_output = Tensor(
        task.model_output, "TYPE_FP32", (-1, width) if task.model_output_has_sequence_axis else (width,)
    )
    mbs = serving.max_batch_size
    rows = mbs * text_options.max_windows if text_options.windowed else mbs  # the model and postprocess steps' rows
    # Per window row: its text's index, and (for steps that read the text) the text on its first row.
    windows = (Tensor(contract.TENSOR_WINDOW_TEXT, "TYPE_INT64", (1,)),)
    if contract.INPUT_TEXT in task.postprocess_inputs:
        windows += (Tensor(contract.TENSOR_WINDOW_SOURCE, "TYPE_STRING", (1,)),)
    windows = windows if text_options.windowed else ()
    policy = serving.version_policy
    # The python model step takes ragged requests (each padded to its own longest text) and
    # sorts their texts by length; the container's native model steps take bucketed tensors.
    ragged = serving.backend == "python-ort" and serving.max_batch_tokens > 0
    model_inputs = tuple(replace(t, ragged=True) for t in token_tensors) if ragged else token_tensors

    def warmup(inputs: tuple[Tensor, ...]) -> tuple[WarmupSample, ...]:
        return bucket_warmup(inputs, settings.buckets) if serving.warmup else ()

    tokenizer = PythonModel(
        name=tokenizer_name,
        inputs=texts,
        outputs=(*token_tensors, *alignment, *windows, truncated),
        max_batch_size=mbs,
        instance_count=serving.tokenizer_instances,
        parameters={"settings": replace(settings, ragged=ragged).to_json(),
                    "truncated_output": contract.OUTPUT_TRUNCATED, "text_options": text_options.to_json(),
                    **pair_parameters(task)},
        version_policy=policy,
        warmup=warmup((text,)),  # an empty text: loads the Rust tokenizer's first-call state
    )
    model = PythonModel(
        name=model_name,
        inputs=model_inputs,
        outputs=(model_output,),
        max_batch_size=rows,
        instance_count=serving.model_instances,
        batching=Batching(serving.model_queue_delay_us, serving.model_batch_sizes(rows)),
        parameters={"onnx_file": "model.onnx", "intra_op_threads": str(serving.intra_op_threads),
                    "lone_text_threads": str(serving.lone_text_threads),
                    "max_batch_tokens": str(serving.max_batch_tokens if ragged else 0),
                    "pack_tokens": str(serving.pack_tokens),  # used by versions that hold a packed graph
                    "limits": InputLimits(settings.vocab_size, settings.type_vocab_size, settings.max_length,
                                          settings.pad_id).to_json()},
        version_policy=policy,
        warmup=warmup(token_tensors),
    )
    available = {
        t.name: t for t in (model_output, text, int64("attention_mask"), int64("input_ids"), *alignment)
    }
    # The postprocess answers each request on its own: ragged inputs let Triton hand it every
    # queued request in one execution (hidden states differ in width per request); without
    # them it ran once per request (1.0 requests per execution at c16, 13 % of server compute).
    postprocess_inputs = tuple(replace(available[n], ragged=True) for n in task.postprocess_inputs) + windows[:1]
    postprocess = PythonModel(
        name=postprocess_name,
        inputs=postprocess_inputs,
        outputs=tuple(
            Tensor(o.name, o.data_type, tuple(width if d == HIDDEN else d for d in o.dims)) for o in task.outputs
        ),
        max_batch_size=rows,
        instance_count=serving.postprocess_instances,
        parameters={"task": task.name, "settings": json.dumps(postprocess_settings(checkpoint, entities))},
        version_policy=policy,
        # Zero-filled offsets and texts mean nothing to the entity grouping: no warm-up there.
        warmup=() if task.token_alignment else warmup(postprocess_inputs),
    )
    return tokenizer, model, postprocess


def contract_parameters(checkpoint: Checkpoint, settings: TokenizerSettings,
                        text: TextOptions = TextOptions()) -> dict[str, str]:
    """What a client reads from ``NAME``'s config, whatever the layout."""
    long_text = {contract.PARAM_PROMPTS: json.dumps(dict(text.prompts)),
                 contract.PARAM_DEFAULT_PROMPT: text.default_prompt_name,
                 contract.PARAM_STRIDE: str(text.stride), contract.PARAM_MAX_WINDOWS: str(text.max_windows)}
    return {
        **long_text,
        contract.PARAM_TASK: checkpoint.task.name,
        contract.PARAM_LABELS: json.dumps(list(checkpoint.labels)),
        contract.PARAM_MULTI_LABEL: json.dumps(checkpoint.multi_label),
        contract.PARAM_MAX_TEXT_BYTES: str(settings.max_text_bytes),
        contract.PARAM_MAX_SEQUENCE_LENGTH: str(settings.max_length),
        contract.PARAM_TEXT_PAIR: json.dumps(checkpoint.task.text_pairs),
        **({contract.PARAM_ACTIVATION: checkpoint.activation} if checkpoint.activation else {}),
    }


def fused_model(
    name: str, checkpoint: Checkpoint, settings: TokenizerSettings, serving: ServingOptions,
    text: TextOptions = TextOptions(),
) -> PythonModel:
    """One python-backend model: TEXT in, the ensemble's outputs out, the same parameters.

    Prompts and ``dimensions`` work here too; long-text windows need the ensemble layout.
    """
    if text.windowed:
        raise RepositoryError("long-text windows (--stride, --long-text chunk) need the ensemble layout")
    tokenizer, model, postprocess = step_models(name, checkpoint, settings, serving)
    answer = AnswerSettings(
        task=checkpoint.task.name,
        model_output=model.outputs[0].name,
        pooling=checkpoint.pooling.mode,
        normalize=checkpoint.pooling.normalize,
        labels=tuple(checkpoint.labels),
        multi_label=checkpoint.multi_label,
        activation=checkpoint.activation,
    )
    return PythonModel(
        name=name,
        inputs=tokenizer.inputs,
        outputs=(*postprocess.outputs, tokenizer.outputs[-1], Tensor(contract.OUTPUT_TOKENS, "TYPE_INT64", (1,))),
        max_batch_size=serving.max_batch_size,
        instance_count=serving.model_instances,
        batching=Batching(serving.model_queue_delay_us, serving.model_batch_sizes(serving.max_batch_size)),
        parameters={
            **contract_parameters(checkpoint, settings, text),
            "settings": settings.to_json(),
            "answer": answer.to_json(),
            "truncated_output": contract.OUTPUT_TRUNCATED,
            "onnx_file": "model.onnx",
            "intra_op_threads": str(serving.intra_op_threads),
            "lone_text_threads": str(serving.lone_text_threads),
            "max_batch_tokens": str(serving.max_batch_tokens),
            "pack_tokens": str(serving.pack_tokens),  # used by versions that hold a packed graph
            **pair_parameters(checkpoint.task),
            "text_options": text.to_json(),
        },
        version_policy=serving.version_policy,
        warmup=bucket_warmup(tokenizer.inputs[:1], settings.buckets) if serving.warmup else (),  # TEXT alone
    )


def ensemble_model(
    name: str,
    steps: tuple[PythonModel, PythonModel, PythonModel],
    checkpoint: Checkpoint,
    settings: TokenizerSettings,
    entities: EntitySettings | None = None,
    text: TextOptions = TextOptions(),
) -> Ensemble:
    """Tie the steps together; every tensor keeps its step-level name inside the ensemble."""
    tokenizer, model, postprocess = steps

    def identity(tensors):
        return {t.name: t.name for t in tensors}

    post_inputs = identity(postprocess.inputs)
    if contract.TENSOR_WINDOW_TEXT in post_inputs and contract.INPUT_TEXT in post_inputs:
        post_inputs[contract.INPUT_TEXT] = contract.TENSOR_WINDOW_SOURCE  # each text once, on its first window

    parameters = contract_parameters(checkpoint, settings, text)
    if entities is not None:
        parameters[contract.PARAM_AGGREGATION] = entities.aggregation
    return Ensemble(
        name=name,
        inputs=tokenizer.inputs,
        outputs=(*postprocess.outputs, tokenizer.outputs[-1]),
        max_batch_size=tokenizer.max_batch_size,
        steps=(
            EnsembleStep(tokenizer.name, identity(tokenizer.inputs), identity(tokenizer.outputs)),
            EnsembleStep(model.name, identity(model.inputs), identity(model.outputs)),
            EnsembleStep(postprocess.name, post_inputs, identity(postprocess.outputs)),
        ),
        parameters=parameters,
        version_policy=model.version_policy,
    )


def backend_source(module: str) -> bytes:
    return resources.files("hf2triton.backends").joinpath(f"{module}.py").read_bytes()


def model_step_files(
    model: PythonModel, onnx_file: Path, serving: ServingOptions, plans: dict[str, Path],
    packed_file: Path | None = None,
) -> tuple[pb.ModelConfig, dict[str, bytes | Path]]:
    """The model step in the chosen flavour: python-ort (model.py + model.onnx + batching.py,
    and the packed graph it serves when there is one), the container's onnxruntime backend (model.onnx), or
    tensorrt (one plan per GPU arch)."""
    if serving.backend == "python-ort":
        files: dict[str, bytes | Path] = {"model.py": backend_source("onnx_model"), "model.onnx": onnx_file,
                                          "batching.py": backend_source("batching")}  # model.py imports it
        if packed_file is not None and serving.pack_tokens > 0:
            files[PACKED_FILE] = packed_file
        return build_python_model(model), files
    if serving.backend == "onnxruntime":
        return build_platform_model(platform_step(model, serving, {})), {"model.onnx": onnx_file}
    if not plans:
        raise RepositoryError("the tensorrt backend needs engines: export with --engines on a GPU machine")
    files: dict[str, bytes | Path] = {}
    cc_plans = {}
    for capability, plan in sorted(plans.items()):
        filename = "model.plan" if len(plans) == 1 else f"model.sm{capability.replace('.', '')}.plan"
        files[filename] = plan
        files[sidecar_path(Path(filename)).name] = sidecar_path(plan)
        cc_plans[capability] = filename
    return build_platform_model(platform_step(model, serving, cc_plans if len(plans) > 1 else {})), files


def repository_models(
    name: str, checkpoint: Checkpoint, onnx_file: Path, tokenizer_json: Path, settings: TokenizerSettings,
    serving: ServingOptions, entities: EntitySettings | None, variants: dict[str, Path], plans: dict[str, Path],
    text: TextOptions = TextOptions(), packed_file: Path | None = None,
) -> dict[str, tuple[pb.ModelConfig, dict[str, bytes | Path]]]:
    """Every model of the export: its config and the files of its version folder, steps first.

    ``packed_file``: the packed graph the fused model or the python-ort model step serves
    instead of ``onnx_file`` (which stays beside it: tools and re-exports read the plain graph;
    precision variants keep their own padded graphs).
    """
    if serving.layout == "fused":
        files: dict[str, bytes | Path] = {"model.py": backend_source("fused"), "tokenizer.json": tokenizer_json,
                                          "model.onnx": onnx_file}
        if packed_file is not None and serving.pack_tokens > 0:
            files[PACKED_FILE] = packed_file
        files.update({f"{module}.py": backend_source(module) for module in FUSED_STEP_MODULES})
        return {name: (build_python_model(fused_model(name, checkpoint, settings, serving, text)), files)}
    steps = step_models(name, checkpoint, settings, serving, entities, text)
    tokenizer, model, postprocess = steps
    post_files: dict[str, bytes | Path] = {"model.py": backend_source("postprocess")}
    if entities is not None:  # words are the tokenizer's own tokens, decoded as transformers does
        post_files["tokenizer.json"] = tokenizer_json
    models = {
        tokenizer.name: (build_python_model(tokenizer), {"model.py": backend_source("tokenizer"),
                                                         "tokenizer.json": tokenizer_json}),
        model.name: model_step_files(model, onnx_file, serving, plans, packed_file),
        postprocess.name: (build_python_model(postprocess), post_files),
        name: (build_ensemble(ensemble_model(name, steps, checkpoint, settings, entities, text)), {}),
    }
    flavour = replace(serving, backend="python-ort" if serving.backend == "python-ort" else "onnxruntime")
    for variant, variant_file in variants.items():
        variant_step = replace(model, name=variant_model(name, variant))
        models[variant_step.name] = model_step_files(variant_step, variant_file, flavour, {})
        ensemble = ensemble_model(variant_ensemble(name, variant), (tokenizer, variant_step, postprocess),
                                  checkpoint, settings, entities, text)
        models[ensemble.name] = (build_ensemble(ensemble), {})
    return models


