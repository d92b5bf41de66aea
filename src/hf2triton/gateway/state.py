"""What every route reads from ``app.state.gateway``: settings, the service, the metrics."""

from __future__ import annotations

from dataclasses import dataclass

from hf2triton.gateway.metrics import GatewayMetrics
from hf2triton.gateway.service import GatewayService
from hf2triton.gateway.settings import GatewaySettings


@dataclass(frozen=True)
class GatewayState:
    settings: GatewaySettings
    service: GatewayService
    metrics: GatewayMetrics
