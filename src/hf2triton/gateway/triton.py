"""The gateway's one gRPC connection to Triton (``tritonclient.grpc.aio``), reused by every request.

Texts go to an ensemble as the ``TEXT`` tensor (BYTES ``[n, 1]``) in chunks of the
ensemble's ``max_batch_size``, sent concurrently; the answers are concatenated back in
order. Errors come out as the client's error tree (:mod:`hf2triton.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hf2triton.client import ModelInfo, TLSOptions, to_client_error
from hf2triton.errors import ClientError
from hf2triton.serving.config import GRPC_RESTRICTED_PREFIX, RESTRICTED_KEY_HEADER

logger = logging.getLogger(__name__)

GRPC_ADMIN_HEADER = GRPC_RESTRICTED_PREFIX + RESTRICTED_KEY_HEADER  # how tritonserver reads the admin key over gRPC
# gRPC messages of a large batch of long texts exceed gRPC's 4 MiB default.
_CHANNEL_ARGS = [("grpc.max_send_message_length", 64 * 1024 * 1024),
                 ("grpc.max_receive_message_length", 64 * 1024 * 1024)]


def text_tensor(texts: Sequence[str]) -> np.ndarray:
    """UTF-8 bytes as the ``[n, 1]`` object array Triton's BYTES inputs take."""
    array = np.empty((len(texts), 1), dtype=np.object_)
    for i, text in enumerate(texts):
        array[i, 0] = text.encode("utf-8")
    return array


class TritonConnection:
    """One lazily opened ``grpc.aio`` client for the running event loop; close it on shutdown."""

    def __init__(self, url: str, timeout_s: float, admin_key: str | None = None, max_concurrent: int = 16,
                 tls: TLSOptions | None = None) -> None:
        self.url = url
        self.tls = tls
        self.timeout_s = timeout_s
        self._admin = {GRPC_ADMIN_HEADER: admin_key} if admin_key else {}
        self._max_concurrent = max_concurrent
        self._client: Any = None

    def __repr__(self) -> str:  # the admin key stays out of logs
        return f"TritonConnection(url={self.url!r})"

    def _connection(self) -> Any:
        if self._client is None:
            import tritonclient.grpc.aio as grpcaio

            secure = self.tls.grpc_kwargs() if self.tls is not None else {}
            self._client = grpcaio.InferenceServerClient(self.url, channel_args=_CHANNEL_ARGS, **secure)
        return self._client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def _call(self, what: str, coroutine: Any) -> Any:
        try:
            return await coroutine
        except ClientError:
            raise
        except Exception as exc:
            raise to_client_error(exc, url=self.url, model=what) from exc

    async def server_ready(self, timeout_s: float = 2.0) -> bool:
        client = self._connection()
        return bool(await self._call("", client.is_server_ready(client_timeout=timeout_s)))

    async def repository_index(self) -> list[dict[str, str]]:
        """``[{"name", "version", "state"}, ...]`` of every model in the repository."""
        client = self._connection()
        answer = await self._call("", client.get_model_repository_index(
            headers=self._admin or None, as_json=True, client_timeout=self.timeout_s))
        return [dict(m) for m in answer.get("models", [])]

    async def model_ready(self, name: str) -> bool:
        client = self._connection()
        return bool(await self._call(name, client.is_model_ready(name, client_timeout=self.timeout_s)))

    async def model_config(self, name: str) -> dict[str, Any]:
        client = self._connection()
        return dict(await self._call(name, client.get_model_config(name, as_json=True, client_timeout=self.timeout_s)))

    async def infer_columns(self, info: ModelInfo, columns: Mapping[str, Sequence[str]],
                            outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Send same-length text columns (``TEXT``, ...) to ``info.name``; outputs concatenated in order."""
        import tritonclient.grpc as grpcclient

        client = self._connection()
        n = len(next(iter(columns.values())))
        size = max(1, info.max_batch_size)
        starts = range(0, n, size)
        gate = asyncio.Semaphore(self._max_concurrent)

        async def send(start: int) -> dict[str, np.ndarray]:
            inputs = []
            for name, texts in columns.items():
                array = text_tensor(texts[start:start + size])
                tensor = grpcclient.InferInput(name, list(array.shape), "BYTES")
                tensor.set_data_from_numpy(array)
                inputs.append(tensor)
            requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
            async with gate:
                result = await self._call(info.name, client.infer(
                    info.name, inputs, outputs=requested, client_timeout=self.timeout_s))
            arrays = {name: result.as_numpy(name) for name in outputs}
            missing = [name for name, array in arrays.items() if array is None]
            if missing:
                raise ClientError(f"model {info.name!r} returned no {', '.join(missing)}")
            return arrays

        if len(starts) == 1:
            parts = [await send(0)]
        else:
            parts = list(await asyncio.gather(*(send(start) for start in starts)))
        return {name: np.concatenate([part[name] for part in parts]) for name in outputs}
