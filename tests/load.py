"""A bounded load generator for the e2e tests: threads of real clients (gRPC and HTTP) sending
mixed batches of texts until told to stop, recording every answer and every error."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from hf2triton.client import Classification, Client, Embedding
from hf2triton.errors import ClientError


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic() when the request was sent
    seconds: float
    protocol: str
    texts: tuple[int, ...]  # indices into the load's texts
    answers: tuple[np.ndarray, ...] = ()  # one vector per text: embedding or class scores
    error: str | None = None


def answer_vector(result: Embedding | Classification) -> np.ndarray:
    if isinstance(result, Embedding):
        return np.asarray(result.vector, dtype=np.float64)
    return np.asarray([result.scores[k] for k in sorted(result.scores)], dtype=np.float64)


@dataclass
class Load:
    """``with Load(...) as load:`` runs ``clients`` threads (alternating gRPC, HTTP) until the block ends."""

    urls: dict[str, str]  # protocol -> host:port
    model: str
    texts: list[str]
    clients: int = 4
    max_batch: int = 4
    seed: int = 0
    backoff_s: float = 0.05  # pause after a failed request, as a real client would
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(i, "grpc" if i % 2 == 0 else "http"), daemon=True)
            for i in range(self.clients)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _run(self, index: int, protocol: str) -> None:
        rng = random.Random(self.seed + index)
        with Client(self.urls[protocol], protocol=protocol, model=self.model, timeout_s=30) as client:
            while not self._stop.is_set():
                picked = tuple(rng.randrange(len(self.texts)) for _ in range(rng.randint(1, self.max_batch)))
                start = time.monotonic()
                try:
                    results = client.infer([self.texts[i] for i in picked])
                    outcome = Outcome(start, time.monotonic() - start, protocol, picked,
                                      tuple(answer_vector(r) for r in results))
                except ClientError as error:
                    outcome = Outcome(start, time.monotonic() - start, protocol, picked, error=str(error))
                    self._stop.wait(self.backoff_s)
                with self._lock:
                    self.outcomes.append(outcome)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error is not None]

    def texts_answered(self) -> int:
        return sum(len(o.texts) for o in self.outcomes if o.error is None)


def single_answers(url: str, protocol: str, model: str, texts: list[str]) -> list[np.ndarray]:
    """Each text's answer sent alone: the reference every loaded answer must equal."""
    with Client(url, protocol=protocol, model=model) as client:
        client.wait_for_model(timeout_s=60)
        return [answer_vector(client.infer([text])[0]) for text in texts]
