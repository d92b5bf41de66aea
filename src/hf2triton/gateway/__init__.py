"""``hf2triton gateway``: OpenAI- and TEI-compatible HTTP routes in front of Triton's ensembles.

Users' code that speaks OpenAI's ``/v1/embeddings`` or TEI's ``/embed``, ``/predict`` and
``/rerank`` works unchanged against hf2triton: the gateway discovers the served
ensembles over one reused gRPC connection and translates. Modules:

* ``settings`` — :class:`GatewaySettings` (listen address, Triton URL, limits, keys)
* ``app`` — the Starlette app: routes, auth, metrics, access log
* ``openai_api`` / ``tei_api`` — the two API flavours
* ``service``, ``catalog``, ``triton``, ``tokens`` — Triton calls, model discovery, token counts
* ``run`` — :func:`run_gateway` (foreground), :func:`start_gateway` (a thread) and
  :func:`start_beside` (a thread for a running ``LocalTritonServer``: ``serve --gateway-port``)
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name → module: imported on first use, so ``hf2triton gateway --help`` (and the CLI's
# parser, which reads the settings) does not load Starlette, uvicorn or tritonclient.
_EXPORTS = {
    "API_KEY_ENV": "settings", "GatewaySettings": "settings", "create_app": "app",
    "GatewayBeside": "run", "GatewayThread": "run", "run_gateway": "run", "start_beside": "run",
    "start_gateway": "run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hf2triton.gateway' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hf2triton.gateway.{_EXPORTS[name]}"), name)
