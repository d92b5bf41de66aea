"""One request never harms another: malformed requests sent straight to every step model
(and the fused model) while good ensemble traffic runs get their own 4xx naming the
problem, and no good request fails (issue 12).

Any client can call a step model directly; a python-backend ``execute`` that raised used
to fail every request batched with the bad one.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import DEFAULT, NER, SENTIMENT, TOPICS_FUSED
from hf2triton import contract
from hf2triton.client import Client

pytestmark = pytest.mark.e2e

TRAFFIC_S = 4.0  # seconds of good traffic, bad requests sent throughout
GOOD_THREADS = 4
GOOD_TEXTS = ["A short sentence.", "Angela Merkel met Emmanuel Macron in Paris.", "这家餐厅的菜非常好吃 🎉",
              "The quick brown fox jumps over the lazy dog, twice, and then sleeps."]
LONE_SURROGATE = "a\ud800b".encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class BadRequest:
    model: str
    what: str
    inputs: Callable[[], list[httpclient.InferInput]]  # built per send (InferInput holds its data)
    expected: str  # a phrase the server's error message must contain


def tensor(name: str, array: np.ndarray, datatype: str | None = None) -> httpclient.InferInput:
    types = {np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32",
             np.dtype(object): "BYTES"}
    item = httpclient.InferInput(name, list(array.shape), datatype or types[array.dtype])
    item.set_data_from_numpy(array)
    return item


def texts(*items: bytes) -> list[httpclient.InferInput]:
    return [tensor(contract.INPUT_TEXT, np.array([[item] for item in items], dtype=object))]


def model_inputs(names: list[str], length: int = 6, **overrides: np.ndarray) -> list[httpclient.InferInput]:
    arrays = {name: np.ones((1, length), dtype=np.int64) for name in names}
    if "token_type_ids" in arrays:
        arrays["token_type_ids"][:] = 0
    arrays.update(overrides)
    return [tensor(name, array) for name, array in arrays.items()]


def step_config(client: httpclient.InferenceServerClient, model: str) -> dict:
    return client.get_model_config(model)


def bad_requests(client: httpclient.InferenceServerClient) -> list[BadRequest]:
    """Malformed tensors for each step of every task, and bad texts for the fused model."""
    cases: list[BadRequest] = []
    bad_texts = [("invalid UTF-8", b"ok \xff\xfe", "not valid UTF-8"), ("NUL byte", b"ab\x00cd", "NUL byte"),
                 ("lone surrogate", LONE_SURROGATE, "not valid UTF-8")]
    for name in (DEFAULT, SENTIMENT, NER):
        tokenizer_step, model_step, postprocess_step = contract.step_names(name)
        for what, text, expected in bad_texts:
            cases.append(BadRequest(tokenizer_step, what, lambda t=text: texts(b"fine", t), expected))
        config = step_config(client, model_step)
        names = [t["name"] for t in config["input"]]
        limits = json.loads(config["parameters"]["limits"]["string_value"])
        vocab, max_length = limits["vocab_size"], limits["max_length"]
        past_vocab = np.array([[1, 2, vocab, 3, 4, 5]], dtype=np.int64)
        cases += [
            BadRequest(model_step, "id past the vocabulary",
                       lambda n=names, p=past_vocab: model_inputs(n, input_ids=p), "outside the vocabulary"),
            BadRequest(model_step, "too many positions",
                       lambda n=names, m=max_length: model_inputs(n, length=m + 40), "over the model's limit"),
            BadRequest(model_step, "wrong dtype",
                       lambda n=names: model_inputs(n, input_ids=np.ones((1, 6), np.int32)), "INT"),
            BadRequest(model_step, "mismatched shapes",
                       lambda n=names: model_inputs(n, attention_mask=np.ones((1, 9), np.int64)), "shape"),
        ]
        post = step_config(client, postprocess_step)
        cases += postprocess_cases(postprocess_step, post)
    for what, text, expected in bad_texts:
        cases.append(BadRequest(TOPICS_FUSED, what, lambda t=text: texts(t, b"fine"), expected))
    return cases


def postprocess_cases(model: str, config: dict) -> list[BadRequest]:
    inputs = {t["name"]: [int(d) for d in t["dims"]] for t in config["input"]}
    if "last_hidden_state" in inputs:  # embeddings
        width = inputs["last_hidden_state"][-1]
        hidden = np.zeros((1, 5, width), np.float32)
        return [BadRequest(model, "mismatched shapes", lambda: [
            tensor("last_hidden_state", hidden), tensor("attention_mask", np.ones((1, 7), np.int64))],
            "one sequence length")]
    if contract.INPUT_TEXT not in inputs:  # sequence classification: logits [n, labels]
        labels = inputs["logits"][-1]
        return [BadRequest(model, "mismatched batch", lambda: [
            tensor("logits", np.zeros((2, labels), np.float32))] + [
            tensor(n, np.ones((1, 4), np.int64)) for n in inputs if n != "logits"], "batch")] if len(inputs) > 1 else [
            BadRequest(model, "wrong dtype", lambda: [tensor("logits", np.zeros((1, labels), np.int64))], "INT64")]
    labels = inputs["logits"][-1]  # token classification

    def ner(text: bytes, offsets: list[list[int]]) -> list[httpclient.InferInput]:
        length = len(offsets)
        return [
            tensor(contract.INPUT_TEXT, np.array([[text]], dtype=object)),
            tensor("input_ids", np.ones((1, length), np.int64)),
            tensor(contract.TENSOR_OFFSETS, np.array([offsets], np.int64)),
            tensor(contract.TENSOR_SPECIAL_TOKENS, np.array([[1] + [0] * (length - 1)], np.int64)),
            tensor("logits", np.zeros((1, length, labels), np.float32)),
        ]

    return [
        BadRequest(model, "invalid UTF-8 TEXT", lambda: ner(b"ab \xff", [[0, 0], [0, 2]]), "not valid UTF-8"),
        BadRequest(model, "offsets outside the text", lambda: ner(b"ab", [[0, 0], [0, 2], [1, 90]]), "outside TEXT"),
        BadRequest(model, "mismatched shapes", lambda: ner(b"ab", [[0, 0], [0, 2]])[:4] + [
            tensor("logits", np.zeros((1, 5, labels), np.float32))], "one sequence length"),
    ]


@dataclass
class Tally:
    sent: int = 0
    failed: int = 0
    errors: list[str] | None = None

    def fail(self, message: str) -> None:
        self.failed += 1
        self.errors = (self.errors or []) + [message[:300]]


def good_traffic(server, stop: threading.Event, tally: Tally, lock: threading.Lock) -> None:
    models = (DEFAULT, SENTIMENT, NER, TOPICS_FUSED)
    clients = [Client(server.grpc_url, protocol="grpc", model=m) for m in models]
    try:
        k = 0
        while not stop.is_set():
            client = clients[k % len(clients)]
            batch = GOOD_TEXTS[: 1 + k % len(GOOD_TEXTS)]
            k += 1
            try:
                results = client.infer(batch)
                ok, message = len(results) == len(batch), f"{client.model}: {len(results)} answers"
            except Exception as exc:  # noqa: BLE001 - any failure of a good request counts
                ok, message = False, f"{client.model}: {exc}"
            with lock:
                tally.sent += 1
                if not ok:
                    tally.fail(message)
    finally:
        for client in clients:
            client.close()


def test_bad_requests_to_every_step_never_fail_good_traffic(server, repository):
    http = httpclient.InferenceServerClient(server.http_url)
    for model in (DEFAULT, SENTIMENT, NER, TOPICS_FUSED):
        with Client(server.grpc_url, protocol="grpc", model=model) as client:
            client.wait_for_model(timeout_s=120)
    cases = bad_requests(http)
    good, lock, stop = Tally(), threading.Lock(), threading.Event()
    threads = [threading.Thread(target=good_traffic, args=(server, stop, good, lock)) for _ in range(GOOD_THREADS)]
    for thread in threads:
        thread.start()
    bad_sent, wrong_answers, deadline, k = 0, [], time.monotonic() + TRAFFIC_S, 0
    try:
        while time.monotonic() < deadline or k < len(cases):  # every case at least once
            case = cases[k % len(cases)]
            k += 1
            bad_sent += 1
            try:
                http.infer(case.model, case.inputs())
                wrong_answers.append(f"{case.model} ({case.what}): answered")
            except InferenceServerException as exc:
                if not (str(exc.status()).startswith("4") and case.expected in exc.message()):
                    wrong_answers.append(f"{case.model} ({case.what}): {exc.status()} {exc.message()}")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        http.close()
    print(f"\nisolation: good requests sent {good.sent}, good failed {good.failed}; "
          f"bad requests sent {bad_sent} ({len(cases)} kinds), answered wrongly {len(wrong_answers)}")
    assert good.sent > 0 and good.failed == 0, good.errors
    assert not wrong_answers, sorted(set(wrong_answers))


def test_huge_texts_are_answered_and_flagged_truncated(server):
    """32 texts of 64 KiB of punctuation (the model's byte limit): tokenized from bounded prefixes."""
    with Client(server.grpc_url, protocol="grpc", model=DEFAULT) as client:
        info = client.wait_for_model(timeout_s=120)
        results = client.infer(["!" * info.max_text_bytes] * 32)
    assert len(results) == 32 and all(r.truncated for r in results)
