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

from hf2triton.gateway.app import create_app
from hf2triton.gateway.run import GatewayThread, run_gateway, start_beside, start_gateway
from hf2triton.gateway.settings import API_KEY_ENV, GatewaySettings

__all__ = ["API_KEY_ENV", "GatewaySettings", "GatewayThread", "create_app", "run_gateway", "start_beside", "start_gateway"]
