"""Which hf2triton ensembles Triton serves, and their tasks: discovered, then kept current.

Discovery reads Triton's repository index and, for each READY model, its config; a
model whose config carries the ``hf2triton.task`` parameter (:mod:`hf2triton.contract`)
is an ensemble the gateway can front. Configs are cached per (name, version), so a
refresh costs one index call when nothing changed. The catalog is refreshed on a
timer and again when a request names a model it does not know (rate-limited), so
models loaded or unloaded in Triton appear and disappear without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from hf2triton import contract
from hf2triton.client import ModelInfo, model_info_from_config
from hf2triton.errors import ClientError, ServerUnavailableError
from hf2triton.gateway.errors import ApiError, model_not_found
from hf2triton.gateway.tokens import (
    NoTokenCounter,
    ResponseTokenCounter,
    TokenCounter,
    TritonTokenCounter,
    local_counter,
)
from hf2triton.gateway.triton import TritonConnection

logger = logging.getLogger(__name__)

MISS_REFRESH_MIN_INTERVAL_S = 1.0  # a flood of unknown names must not become a flood of index calls


@dataclass(frozen=True)
class ServedModel:
    info: ModelInfo
    version: str
    tokens: TokenCounter


class ModelCatalog:
    """The served ensembles by name; ``refresh()`` re-reads Triton, ``get()`` refreshes on a miss."""

    def __init__(self, connection: TritonConnection, model_repository: Path | None = None) -> None:
        self._connection = connection
        self._repository = model_repository
        self._models: dict[str, ServedModel] = {}
        self._not_ensembles: set[tuple[str, str]] = set()  # (name, version) of step models etc.
        self._lock = asyncio.Lock()
        self._last_refresh = float("-inf")
        self._stale = True  # the last refresh failed (or none ran): a miss must ask Triton, not answer 404

    @property
    def models(self) -> dict[str, ServedModel]:
        return dict(self._models)

    async def refresh(self) -> dict[str, ServedModel]:
        """Re-read the repository index; raises :class:`ServerUnavailableError` when Triton is down."""
        async with self._lock:
            self._last_refresh = time.monotonic()
            self._stale = True
            index = await self._connection.repository_index()
            ready = {m["name"]: str(m.get("version", "")) for m in index if m.get("state") == "READY"}
            models: dict[str, ServedModel] = {}
            for name, version in ready.items():
                known = self._models.get(name)
                if known is not None and known.version == version:
                    models[name] = known
                elif (name, version) not in self._not_ensembles:
                    served = await self._discover(name, version, ready)
                    if served is None:
                        self._not_ensembles.add((name, version))
                    else:
                        models[name] = served
            added, removed = models.keys() - self._models.keys(), self._models.keys() - models.keys()
            if added or removed:
                logger.info("served models: %s (added %s, removed %s)", sorted(models), sorted(added), sorted(removed))
            self._models = models
            self._stale = False
            return dict(models)

    async def _discover(self, name: str, version: str, ready: dict[str, str]) -> ServedModel | None:
        try:
            config = await self._connection.model_config(name)
            info = model_info_from_config(name, config)
        except ServerUnavailableError:
            raise
        except ClientError as exc:  # a step model or a foreign model: not ours to front
            logger.debug("skipping %s: %s", name, exc)
            return None
        body = config.get("config", config)
        if any(output.get("name") == contract.OUTPUT_TOKENS for output in body.get("output", [])):
            return ServedModel(info, version, ResponseTokenCounter())
        return ServedModel(info, version, await self._token_counter(info, ready))

    async def _token_counter(self, info: ModelInfo, ready: dict[str, str]) -> TokenCounter:
        if self._repository is not None:
            counter = await asyncio.to_thread(local_counter, self._repository, info)
            if counter is not None:
                logger.info("%s: counting tokens with %s", info.name, counter.source)
                return counter
        tokenizer_step = contract.step_names(info.name)[0]
        if tokenizer_step in ready:
            config = await self._connection.model_config(tokenizer_step)
            config = config.get("config", config)
            step = ModelInfo(name=tokenizer_step, task="tokenize", labels=(), multi_label=False,
                             max_batch_size=int(config.get("max_batch_size", 0) or 0) or info.max_batch_size,
                             max_text_bytes=0, max_sequence_length=0)
            text_input = (config.get("input") or [{}])[0].get("name", contract.INPUT_TEXT)
            return TritonTokenCounter(self._connection, step, text_input)
        logger.warning("%s: no tokenizer.json nearby and no tokenizer step served: usage will report 0 tokens "
                       "(start the gateway with --model-repository to count them)", info.name)
        return NoTokenCounter()

    async def get(self, name: str) -> ServedModel:
        """The served model ``name``; a miss refreshes the catalog once, then answers 404."""
        served = self._models.get(name)
        if served is None and (self._stale or time.monotonic() - self._last_refresh >= MISS_REFRESH_MIN_INTERVAL_S):
            await self.refresh()
            served = self._models.get(name)
        if served is None:
            raise model_not_found(name, list(self._models))
        return served

    async def forget(self, name: str) -> None:
        """Drop ``name`` after Triton said it is gone; the next refresh may bring it back."""
        self._models.pop(name, None)

    async def pick(self, name: str | None, task: str, default: str | None, route: str) -> ServedModel:
        """The model a route that may name none should use: ``name``, else ``default`` when it serves
        ``task``, else the only model of ``task``."""
        if name is not None:
            return await self.get(name)
        if not self._models or self._stale:
            await self.refresh()
        if default is not None and default in self._models and self._models[default].info.task == task:
            return self._models[default]
        candidates = [m for m in self._models.values() if m.info.task == task]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            served = ", ".join(f"{m.info.name} ({m.info.task})" for m in self._models.values()) or "none"
            raise ApiError(400, f"{route} needs a {task} model, and none is served (served: {served})", "model",
                           "no_such_task")
        names = ", ".join(sorted(m.info.name for m in candidates))
        raise ApiError(400, f"several {task} models are served ({names}): name one with \"model\"", "model",
                       "model_required")

    async def run_refresh_loop(self, interval_s: float) -> None:
        """Refresh every ``interval_s`` until cancelled; Triton being down is logged, not fatal."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except ClientError as exc:
                logger.warning("could not refresh the served models: %s", exc)
