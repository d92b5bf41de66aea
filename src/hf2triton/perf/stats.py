"""Triton's statistics API (``/v2/models/stats``) → per-step queue and compute time.

Triton counts, per model, the requests it answered and, summed over requests, the
time each spent queued and in compute (input, infer, output); a request that ran in
a batch of 8 is charged the whole batch's compute. ``batch_stats`` also counts each
*execution* once, which is what the CPU actually spent. A measurement is the
difference of two snapshots. For an ensemble, perf_analyzer reports the sum of its
composing models' per-request times; so does :func:`server_time`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

NS_PER_US = 1000.0


@dataclass(frozen=True)
class ModelCounters:
    """Cumulative counters of one model, as the statistics API reports them."""

    requests: int = 0
    executions: int = 0
    queue_ns: int = 0
    compute_input_ns: int = 0
    compute_infer_ns: int = 0
    compute_output_ns: int = 0
    execution_compute_ns: int = 0  # compute summed once per execution (batch), all phases

    def __sub__(self, other: ModelCounters) -> ModelCounters:
        return ModelCounters(**{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)})


@dataclass(frozen=True)
class StepTime:
    """One model's average time per request (µs) over a measurement, and its execution compute."""

    model: str
    requests: int
    executions: int
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float
    execution_compute_us: float  # total CPU-side compute of all executions in the measurement

    @property
    def compute_us(self) -> float:
        return self.compute_input_us + self.compute_infer_us + self.compute_output_us


def _ns(section: Mapping[str, Any] | None) -> int:
    return int((section or {}).get("ns", 0) or 0)


def counters_from_stats(model_stats: Mapping[str, Any]) -> ModelCounters:
    """Parse one entry of ``model_stats`` (HTTP JSON, or gRPC ``as_json`` with int64 as strings)."""
    inference = model_stats.get("inference_stats") or {}
    execution_ns = sum(
        _ns(batch.get(phase))
        for batch in model_stats.get("batch_stats") or []
        for phase in ("compute_input", "compute_infer", "compute_output")
    )
    return ModelCounters(
        requests=int((inference.get("success") or {}).get("count", 0) or 0),
        executions=int(model_stats.get("execution_count", 0) or 0),
        queue_ns=_ns(inference.get("queue")),
        compute_input_ns=_ns(inference.get("compute_input")),
        compute_infer_ns=_ns(inference.get("compute_infer")),
        compute_output_ns=_ns(inference.get("compute_output")),
        execution_compute_ns=execution_ns,
    )


def counters_by_model(statistics: Mapping[str, Any]) -> dict[str, ModelCounters]:
    """``{model name: counters}`` from a whole statistics answer (latest version of each)."""
    return {entry["name"]: counters_from_stats(entry) for entry in statistics.get("model_stats") or []}


def step_time(model: str, delta: ModelCounters) -> StepTime:
    per_request = max(delta.requests, 1) * NS_PER_US
    return StepTime(
        model=model,
        requests=delta.requests,
        executions=delta.executions,
        queue_us=delta.queue_ns / per_request,
        compute_input_us=delta.compute_input_ns / per_request,
        compute_infer_us=delta.compute_infer_ns / per_request,
        compute_output_us=delta.compute_output_ns / per_request,
        execution_compute_us=delta.execution_compute_ns / NS_PER_US,
    )


def step_times(
    steps: Sequence[str], before: Mapping[str, ModelCounters], after: Mapping[str, ModelCounters]
) -> tuple[StepTime, ...]:
    empty = ModelCounters()
    return tuple(step_time(name, after.get(name, empty) - before.get(name, empty)) for name in steps)


@dataclass(frozen=True)
class ServerTime:
    """perf_analyzer's server-side columns (µs per request, summed over composing models)."""

    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float

    @property
    def total_us(self) -> float:
        return self.queue_us + self.compute_input_us + self.compute_infer_us + self.compute_output_us


def server_time(steps: Sequence[StepTime]) -> ServerTime:
    return ServerTime(
        queue_us=sum(s.queue_us for s in steps),
        compute_input_us=sum(s.compute_input_us for s in steps),
        compute_infer_us=sum(s.compute_infer_us for s in steps),
        compute_output_us=sum(s.compute_output_us for s in steps),
    )


def composing_models(name: str, config: Mapping[str, Any]) -> tuple[str, ...]:
    """The models an ensemble runs, in step order; a plain model is its own single step."""
    if isinstance(config.get("config"), Mapping):
        config = config["config"]
    steps = (config.get("ensemble_scheduling") or {}).get("step") or []
    return tuple(step["model_name"] for step in steps) or (name,)


def compute_shares(steps: Sequence[StepTime]) -> dict[str, float]:
    """Each step's share of the executions' compute time (what the server's CPU did)."""
    total = sum(s.execution_compute_us for s in steps)
    return {s.model: (s.execution_compute_us / total if total else float("nan")) for s in steps}
