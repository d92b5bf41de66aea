"""A small stdlib HTTP helper for the gateway tests: raw requests exactly as curl would send them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def call(base_url: str, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         headers: dict[str, str] | None = None, timeout_s: float = 120) -> Answer:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return Answer(response.status, response.read(), dict(response.headers))
    except urllib.error.HTTPError as error:
        return Answer(error.code, error.read(), dict(error.headers))


def post(base_url: str, path: str, body: Any = None, **kwargs: Any) -> Answer:
    return call(base_url, "POST", path, body, **kwargs)


def get(base_url: str, path: str, **kwargs: Any) -> Answer:
    return call(base_url, "GET", path, **kwargs)


def assert_openai_error(answer: Answer, status: int, *words: str) -> dict:
    """OpenAI's error shape ``{"error": {"message", "type", "param", "code"}}``, the message naming ``words``."""
    assert answer.status == status, (answer.status, answer.body)
    error = answer.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert "Traceback" not in error["message"]
    for word in words:
        assert word in error["message"], (word, error["message"])
    return error


def assert_tei_error(answer: Answer, status: int, *words: str) -> dict:
    """TEI's error shape ``{"error", "error_type"}``."""
    assert answer.status == status, (answer.status, answer.body)
    error = answer.json()
    assert set(error) == {"error", "error_type"}, error
    assert error["error_type"] in {"Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"}
    assert "Traceback" not in error["error"]
    for word in words:
        assert word in error["error"], (word, error["error"])
    return error
