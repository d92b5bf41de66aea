"""Prometheus metrics of the gateway: requests, latency and errors per endpoint.

Each app owns its registry (no global state), so several gateways in one process —
tests, or a gateway beside other instrumented code — never collide.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# Latency buckets from 1 ms to 30 s: a single embedding takes milliseconds, a large batch seconds.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        object.__setattr__(self, "requests", Counter(
            "hf2triton_gateway_requests", "HTTP requests answered, by endpoint and status code",
            ("endpoint", "status"), registry=self.registry))
        object.__setattr__(self, "errors", Counter(
            "hf2triton_gateway_errors", "HTTP requests answered with a 4xx or 5xx status, by endpoint and status",
            ("endpoint", "status"), registry=self.registry))
        object.__setattr__(self, "latency", Histogram(
            "hf2triton_gateway_request_duration_seconds", "Time from request to the end of the answer, by endpoint",
            ("endpoint",), buckets=_BUCKETS, registry=self.registry))
        object.__setattr__(self, "models", Gauge(
            "hf2triton_gateway_models", "hf2triton ensembles currently discovered on Triton",
            registry=self.registry))

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if status >= 400:
            self.errors.labels(endpoint, str(status)).inc()

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
