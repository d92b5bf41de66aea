"""The local load generator: asyncio clients drive a running server like perf_analyzer.

Or wrk (``load_generator="wrk"``, HTTP only, ``hf2triton.perf.wrk``): the same points and
stability rule, with the requests sent by a C program that leaves the cores to the server
under test; its windows are counted inside one wrk run per point.

For each protocol × request batch size × concurrency (a *point*), ``concurrency``
workers each keep one request in flight over one shared tritonclient aio connection,
sending real texts in order (with ``pairs``, each text with the next one as its
``TEXT_PAIR``: the load of a pair classifier or reranker). After a warm-up, the point
is measured in windows of ``window_s``; it ends when the last ``stable_windows``
windows agree within ``stability_pct`` on throughput and mean latency (perf_analyzer's
rule), or after ``max_windows`` (then it is marked unstable). Server-side time comes from Triton's
statistics API, snapshotted around each window, per composing model. Failed requests
are counted per point and the first error message kept; a point never hides them.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hf2triton import contract
from hf2triton.client.transport import PROTOCOLS, Transport, output_arrays, parse_endpoint
from hf2triton.errors import ClientError, Hf2TritonError
from hf2triton.cpu import CpuMeter, CpuUsage
from hf2triton.perf import wrk
from hf2triton.perf.stats import (
    ModelCounters,
    ServerTime,
    StepTime,
    composing_models,
    counters_by_model,
    server_time,
    step_times,
)

log = logging.getLogger(__name__)

LOAD_GENERATORS = ("asyncio", "wrk")


@dataclass(frozen=True)
class SweepSettings:
    """What to sweep and how long to measure each point."""

    model: str
    urls: dict[str, str]  # protocol -> host:port
    concurrencies: tuple[int, ...] = (1, 2, 4, 8, 16)
    batch_sizes: tuple[int, ...] = (1,)
    window_s: float = 2.0
    warmup_s: float = 1.0
    stability_pct: float = 10.0
    stable_windows: int = 3
    max_windows: int = 8
    request_timeout_s: float = 60.0
    tls: Mapping[str, Any] = field(default_factory=dict)  # parse_endpoint's TLS keywords (ssl, root_certificates, ...)
    pairs: bool = False  # send each text with the next one as its TEXT_PAIR (pair classifiers, rerankers)
    load_generator: str = "asyncio"  # or "wrk": HTTP only, whole-second windows

    def __post_init__(self) -> None:
        problems = [f"unknown protocol {p!r} (use grpc or http)" for p in self.urls if p not in PROTOCOLS]
        if self.load_generator not in LOAD_GENERATORS:
            problems.append(f"unknown load generator {self.load_generator!r} (use {' or '.join(LOAD_GENERATORS)})")
        if self.load_generator == "wrk" and (set(self.urls) - {"http"} or any(self.tls.values())):
            problems.append("wrk speaks plain HTTP only: sweep the http protocol without TLS options, "
                            "or use the asyncio load generator")
        if not self.urls:
            problems.append("no protocol to measure")
        if not self.concurrencies or min(self.concurrencies) < 1:
            problems.append(f"concurrencies must be >= 1, got {self.concurrencies}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            problems.append(f"batch sizes must be >= 1, got {self.batch_sizes}")
        if self.window_s <= 0 or self.warmup_s < 0:
            problems.append("window must be > 0 s and warm-up >= 0 s")
        if not 1 <= self.stable_windows <= self.max_windows:
            problems.append(f"need 1 <= stable windows ({self.stable_windows}) <= max windows ({self.max_windows})")
        if problems:
            raise Hf2TritonError("invalid sweep settings: " + "; ".join(problems))

    @property
    def point_count(self) -> int:
        return len(self.urls) * len(self.batch_sizes) * len(self.concurrencies)


@dataclass(frozen=True)
class Window:
    """One measurement window of one point."""

    duration_s: float
    latencies_us: tuple[float, ...]
    client_send_us: float  # summed over the window's requests
    client_recv_us: float
    errors: int
    first_error: str
    steps: tuple[StepTime, ...]
    cpu: CpuUsage

    @property
    def requests(self) -> int:
        return len(self.latencies_us)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s

    @property
    def mean_latency_us(self) -> float:
        return float(np.mean(self.latencies_us)) if self.latencies_us else 0.0


@dataclass(frozen=True)
class PerfPoint:
    """One point's result over its last stable windows, in perf_analyzer's terms (µs)."""

    protocol: str
    batch_size: int
    concurrency: int
    inferences_per_s: float  # texts per second (requests × batch size)
    requests: int
    errors: int
    first_error: str
    client_send_us: float
    network_us: float  # Network+Server Send/Recv: what the client waited beyond server queue+compute
    server: ServerTime
    client_recv_us: float
    p50_us: float
    p90_us: float
    p95_us: float
    p99_us: float
    mean_latency_us: float
    steps: tuple[StepTime, ...]
    windows: int
    stable: bool
    cpu_busy_pct: float
    cpu_other_pct: float


@dataclass
class _Recorder:
    """Mutable tallies the workers add to; the window controller takes and resets them."""

    latencies_us: list[float] = field(default_factory=list)
    send_us: float = 0.0
    recv_us: float = 0.0
    errors: int = 0
    first_error: str = ""

    def take(self) -> _Recorder:
        taken = _Recorder(self.latencies_us, self.send_us, self.recv_us, self.errors, self.first_error)
        self.latencies_us, self.send_us, self.recv_us, self.errors, self.first_error = [], 0.0, 0.0, 0, ""
        return taken


ProgressCallback = Callable[[str, int, float], None]  # (point label, windows so far, inferences/s)


class _Connection:
    """The shared client transport (asyncio) to the model, and what every request needs.

    Statistics go over a second transport: a busy HTTP pool would keep them waiting.
    """

    def __init__(self, protocol: str, url: str, model: str, max_concurrency: int, timeout_s: float,
                 tls: Mapping[str, Any] | None = None) -> None:
        self.protocol, self.url, self.model, self.timeout_s = protocol, url, model, timeout_s
        endpoint = parse_endpoint(url, protocol, **(tls or {}))
        self.transport = Transport(endpoint, model, asynchronous=True, timeout_s=timeout_s,
                                   connections=max_concurrency)
        self.stats_transport = Transport(endpoint, model, asynchronous=True, timeout_s=timeout_s, connections=1)
        self.steps: tuple[str, ...] = ()
        self.output_names: tuple[str, ...] = ()
        self.takes_pairs = False

    async def open(self) -> None:
        with self.transport.translated():
            config = await self.transport.model_config()
        body = config.get("config", config)
        self.steps = composing_models(self.model, body)
        self.output_names = tuple(output["name"] for output in body.get("output", []))
        self.takes_pairs = any(tensor["name"] == contract.INPUT_TEXT_PAIR for tensor in body.get("input", []))

    async def close(self) -> None:
        for transport in (self.transport, self.stats_transport):
            closing = transport.close()
            if closing is not None:
                await closing

    async def counters(self) -> dict[str, ModelCounters]:
        return counters_by_model(await self.stats_transport.statistics())

    async def infer(self, batch: RequestBatch, recorder: _Recorder) -> None:
        start = time.perf_counter()
        request = self.transport.request(batch.texts, self.output_names, pair=batch.pairs)
        sent = time.perf_counter()
        try:
            result = await self.transport.infer(request)
            received = time.perf_counter()
            output_arrays(result, self.output_names)
        except Exception as exc:  # counted and reported per point, never hidden
            recorder.errors += 1
            recorder.first_error = recorder.first_error or f"{type(exc).__name__}: {exc}"
            return
        done = time.perf_counter()
        recorder.latencies_us.append((done - start) * 1e6)
        recorder.send_us += (sent - start) * 1e6
        recorder.recv_us += (done - received) * 1e6


@dataclass(frozen=True)
class RequestBatch:
    """One request's BYTES tensors [batch_size, 1]: ``TEXT``, and ``TEXT_PAIR`` when sending pairs."""

    texts: np.ndarray
    pairs: np.ndarray | None = None


def request_batches(texts: Sequence[str], batch_size: int, count: int = 512,
                    pairs: bool = False) -> list[RequestBatch]:
    """At least ``count`` requests of ``batch_size`` consecutive texts (wrapping around), and
    enough to send every text: a sweep and an in-process run over the same texts must see
    the same texts. With ``pairs`` each text's pair is the text after it."""
    encoded = [t.encode("utf-8") for t in texts]
    count = max(count, -(-len(encoded) // batch_size))

    def rows(first: int) -> np.ndarray:
        chosen = [encoded[(first + j) % len(encoded)] for j in range(batch_size)]
        return np.array(chosen, dtype=np.object_).reshape(batch_size, 1)

    return [RequestBatch(rows(index * batch_size), rows(index * batch_size + 1) if pairs else None)
            for index in range(count)]


async def _worker(connection: _Connection, batches: list[RequestBatch], offset: int, stride: int,
                  recorder: _Recorder, stop: asyncio.Event) -> None:
    index = offset
    while not stop.is_set():
        await connection.infer(batches[index % len(batches)], recorder)
        index += stride


def is_stable(windows: Sequence[Window | wrk.WrkWindow], count: int, tolerance_pct: float) -> bool:
    """perf_analyzer's rule: the last ``count`` windows' throughput and latency within tolerance of their mean."""
    if len(windows) < count:
        return False
    last = windows[-count:]
    for values in ([w.requests_per_s for w in last], [w.mean_latency_us for w in last]):
        mean = statistics.fmean(values)
        if mean and any(abs(v - mean) > mean * tolerance_pct / 100 for v in values):
            return False
    return True


async def _measure_window(connection: _Connection, recorder: _Recorder, meter: CpuMeter, window_s: float) -> Window:
    recorder.take()
    before = await connection.counters()
    cpu_before, start = meter.sample(), time.perf_counter()
    await asyncio.sleep(window_s)
    taken, elapsed, cpu_after = recorder.take(), time.perf_counter() - start, meter.sample()
    after = await connection.counters()
    return Window(
        duration_s=elapsed,
        latencies_us=tuple(taken.latencies_us),
        client_send_us=taken.send_us,
        client_recv_us=taken.recv_us,
        errors=taken.errors,
        first_error=taken.first_error,
        steps=step_times(connection.steps, before, after),
        cpu=meter.usage(cpu_before, cpu_after),
    )


def summarise(protocol: str, batch_size: int, concurrency: int, windows: Sequence[Window], stable: bool,
              stable_windows: int) -> PerfPoint:
    """Combine the last ``stable_windows`` windows into one point (errors: over all windows)."""
    used = list(windows[-stable_windows:])
    latencies = np.array([v for w in used for v in w.latencies_us] or [0.0])
    requests = sum(w.requests for w in used)
    duration = sum(w.duration_s for w in used)
    steps = _merge_steps([w.steps for w in used])
    server = server_time(steps)
    per_request = max(requests, 1)
    send = sum(w.client_send_us for w in used) / per_request
    recv = sum(w.client_recv_us for w in used) / per_request
    mean = float(latencies.mean()) if requests else 0.0
    p50, p90, p95, p99 = (float(np.percentile(latencies, q)) for q in (50, 90, 95, 99))
    return PerfPoint(
        protocol=protocol, batch_size=batch_size, concurrency=concurrency,
        inferences_per_s=requests * batch_size / duration if duration else 0.0,
        requests=requests, errors=sum(w.errors for w in windows),
        first_error=next((w.first_error for w in windows if w.first_error), ""),
        client_send_us=send, network_us=max(0.0, mean - send - recv - server.total_us), server=server,
        client_recv_us=recv, p50_us=p50, p90_us=p90, p95_us=p95, p99_us=p99, mean_latency_us=mean,
        steps=steps, windows=len(windows), stable=stable,
        cpu_busy_pct=statistics.fmean(w.cpu.busy_pct for w in used),
        cpu_other_pct=statistics.fmean(w.cpu.other_pct for w in used),
    )


def _merge_steps(per_window: Sequence[tuple[StepTime, ...]]) -> tuple[StepTime, ...]:
    """Request-weighted average of each step over several windows; execution compute summed."""
    merged = []
    for same_step in zip(*per_window):
        requests = sum(s.requests for s in same_step)
        weight = max(requests, 1)

        def avg(attr: str) -> float:
            return sum(getattr(s, attr) * s.requests for s in same_step) / weight

        merged.append(StepTime(
            model=same_step[0].model, requests=requests, executions=sum(s.executions for s in same_step),
            queue_us=avg("queue_us"), compute_input_us=avg("compute_input_us"),
            compute_infer_us=avg("compute_infer_us"), compute_output_us=avg("compute_output_us"),
            execution_compute_us=sum(s.execution_compute_us for s in same_step),
        ))
    return tuple(merged)


async def measure_point(connection: _Connection, batches: list[RequestBatch], settings: SweepSettings,
                        batch_size: int, concurrency: int, meter: CpuMeter,
                        progress: ProgressCallback | None = None) -> PerfPoint:
    """Warm up, then measure windows until stable or bounded; stop the workers cleanly."""
    if settings.load_generator == "wrk":
        return await measure_point_wrk(connection, batches, settings, batch_size, concurrency, meter, progress)
    recorder, stop = _Recorder(), asyncio.Event()
    workers = [asyncio.create_task(_worker(connection, batches, i, concurrency, recorder, stop))
               for i in range(concurrency)]
    label = f"{connection.protocol} b{batch_size} c{concurrency}"
    try:
        await asyncio.sleep(settings.warmup_s)
        windows: list[Window] = []
        stable = False
        while not stable and len(windows) < settings.max_windows:
            windows.append(await _measure_window(connection, recorder, meter, settings.window_s))
            stable = is_stable(windows, settings.stable_windows, settings.stability_pct)
            if progress is not None:
                progress(label, len(windows), windows[-1].requests_per_s * batch_size)
    finally:
        stop.set()
        await asyncio.wait(workers, timeout=settings.request_timeout_s)
    return _logged(summarise(connection.protocol, batch_size, concurrency, windows, stable, settings.stable_windows),
                   label)


async def measure_point_wrk(connection: _Connection, batches: list[RequestBatch], settings: SweepSettings,
                            batch_size: int, concurrency: int, meter: CpuMeter,
                            progress: ProgressCallback | None = None) -> PerfPoint:
    """The same point with wrk sending the requests: a warm-up run, then one run whose
    windows wrk counts as they end, stopped once stable; server statistics and CPU are
    sampled around that run (every window of it)."""
    url = f"http://{connection.url.split('://')[-1]}/v2/models/{connection.model}/infer"
    bodies = wrk.triton_bodies(batches, with_pairs=settings.pairs)
    label = f"http b{batch_size} c{concurrency} (wrk)"
    timeout = settings.request_timeout_s
    if settings.warmup_s > 0:
        warm = await asyncio.to_thread(wrk.run_wrk, url, bodies, concurrency, settings.warmup_s, 1, None, timeout)
        await asyncio.to_thread(wrk.drain, warm)

    def enough(windows: list[wrk.WrkWindow]) -> bool:
        if progress is not None:
            progress(label, len(windows), windows[-1].requests_per_s * batch_size)
        return is_stable(windows, settings.stable_windows, settings.stability_pct)

    before, cpu_before = await connection.counters(), meter.sample()
    run = await asyncio.to_thread(wrk.run_wrk, url, bodies, concurrency, settings.window_s, settings.max_windows,
                                  enough, timeout)
    cpu = meter.usage(cpu_before, meter.sample())  # wrk's CPU is the meter's own once it is reaped
    steps = step_times(connection.steps, before, await connection.counters())
    await asyncio.to_thread(wrk.drain, run)
    stable = is_stable(run.windows, settings.stable_windows, settings.stability_pct)
    return _logged(summarise_run(run, batch_size, concurrency, stable, settings.stable_windows, steps, cpu), label)


def summarise_run(run: wrk.WrkRun, batch_size: int, concurrency: int, stable: bool, stable_windows: int,
                  steps: tuple[StepTime, ...], cpu: CpuUsage) -> PerfPoint:
    """A wrk run as a point: throughput over its last ``stable_windows`` windows, latency
    percentiles over the whole run (wrk keeps one histogram), errors over the whole run.
    wrk does not time sending and receiving apart: the client columns read 0."""
    requests, rate = run.settled(stable_windows)
    latencies = np.array(run.latencies_us or (0.0,))
    server = server_time(steps)
    mean = float(latencies.mean())
    p50, p90, p95, p99 = (float(np.percentile(latencies, q)) for q in (50, 90, 95, 99))
    return PerfPoint(
        protocol="http", batch_size=batch_size, concurrency=concurrency,
        inferences_per_s=rate * batch_size, requests=requests,
        errors=run.errors, first_error=run.first_error, client_send_us=0.0,
        network_us=max(0.0, mean - server.total_us), server=server, client_recv_us=0.0, p50_us=p50, p90_us=p90,
        p95_us=p95, p99_us=p99, mean_latency_us=mean, steps=steps, windows=len(run.windows), stable=stable,
        cpu_busy_pct=cpu.busy_pct, cpu_other_pct=cpu.other_pct,
    )


def _logged(point: PerfPoint, label: str) -> PerfPoint:
    if point.errors:
        log.warning("%s: %d failed requests (first: %s)", label, point.errors, point.first_error)
    return point


async def run_sweep_async(settings: SweepSettings, texts: Sequence[str], meter: CpuMeter | None = None,
                          progress: ProgressCallback | None = None) -> list[PerfPoint]:
    meter = meter or CpuMeter()
    points = []
    for protocol, url in settings.urls.items():
        connection = _Connection(protocol, url, settings.model, max(settings.concurrencies),
                                 settings.request_timeout_s, settings.tls)
        try:
            await connection.open()
            check_pairs(settings, connection.takes_pairs)
            for batch_size in settings.batch_sizes:
                batches = request_batches(texts, batch_size, pairs=settings.pairs)
                for concurrency in settings.concurrencies:
                    points.append(await measure_point(connection, batches, settings, batch_size, concurrency,
                                                      meter, progress))
        finally:
            await connection.close()
    return points


def check_pairs(settings: SweepSettings, takes_pairs: bool) -> None:
    """Refuse pairs for a model without ``TEXT_PAIR``; say so when a pair model gets texts alone."""
    if settings.pairs and not takes_pairs:
        raise ClientError(f"model {settings.model!r} takes no {contract.INPUT_TEXT_PAIR} input: sending pairs "
                          f"(--pairs) is for pair classifiers and rerankers; sweep this model without it")
    if takes_pairs and not settings.pairs:
        log.warning("model %r takes %s; this sweep sends each text alone (hf2triton perf --pairs sends pairs)",
                    settings.model, contract.INPUT_TEXT_PAIR)


def run_sweep(settings: SweepSettings, texts: Sequence[str], meter: CpuMeter | None = None,
              progress: ProgressCallback | None = None) -> list[PerfPoint]:
    """Measure every point of ``settings`` against the running server; raises ClientError if unreachable."""
    if not texts:
        raise ClientError("no texts to send")
    return asyncio.run(run_sweep_async(settings, texts, meter, progress))
