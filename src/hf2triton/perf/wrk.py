"""Closed-loop HTTP load from wrk, a load generator written in C.

The asyncio load generator (``sweep.py``) spends about 320 µs of CPU per request in
Python: at 240 requests/s that is 5 % of a 2-core machine taken from the server it
measures (``perf record`` during ``perf/bench.py``'s c16 cell). perf_analyzer, Triton's
own C++ load generator, is not installable here (DESIGN.md); wrk is the light stand-in.
It speaks HTTP/1.1 only, so it measures the HTTP endpoint, and it checks the status of
each answer, not its contents (the asyncio load generator reads every output).

One wrk thread keeps ``concurrency`` connections, each with one request in flight,
sending the request bodies in order (wrapping around). A Lua script reads the bodies
from a file and writes the run's summary and latency histogram as JSON.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hf2triton import contract
from hf2triton.errors import MissingDependencyError

INSTALL_HINT = "install it with `apt-get install wrk` (Debian/Ubuntu) or `brew install wrk` (macOS)"

# Runs in wrk's Lua 5.1 (LuaJIT). Bodies: one request body per line of the file named by
# HF2TRITON_WRK_BODIES. done() writes JSON to HF2TRITON_WRK_RESULT: the summary, errors by
# kind, the first non-2xx answer and the latency histogram as [µs, count] pairs.
SCRIPT = r"""
local bodies, sent, threads = {}, 0, {}
first_error = ""

function setup(thread) table.insert(threads, thread) end

function init(args)
  for line in io.lines(os.getenv("HF2TRITON_WRK_BODIES")) do bodies[#bodies + 1] = line end
end

function request()
  sent = sent % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[sent])
end

function response(status, headers, body)
  if status >= 300 and first_error == "" then first_error = status .. " " .. body:sub(1, 400) end
end

local function quoted(text)
  return '"' .. text:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function done(summary, latency, requests)
  local e = summary.errors
  local pairs_ = {}
  for i = 1, #latency do
    local value, count = latency(i)
    pairs_[#pairs_ + 1] = string.format("[%d,%d]", value, count)
  end
  local out = io.open(os.getenv("HF2TRITON_WRK_RESULT"), "w")
  out:write(string.format(
    '{"duration_us":%d,"requests":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
    .. '"first_error":%s,"latency_us":[%s]}',
    summary.duration, summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
    quoted(threads[1]:get("first_error") or ""), table.concat(pairs_, ",")))
  out:close()
end
"""


@dataclass(frozen=True)
class WrkRun:
    """One wrk run: its answered requests' latencies, and the requests that failed."""

    duration_s: float
    latencies_us: tuple[float, ...]  # one per request answered with a 2xx status
    errors: int  # non-2xx answers, timeouts, connect/read/write errors
    first_error: str

    @property
    def requests(self) -> int:
        return len(self.latencies_us)


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise MissingDependencyError(f"wrk (the C HTTP load generator) is not on PATH: {INSTALL_HINT}")
    return found


def triton_bodies(batches: Sequence, with_pairs: bool = False) -> list[str]:
    """KServe v2 JSON bodies, one per request batch (``TEXT``, and ``TEXT_PAIR`` with
    ``with_pairs``), asking for binary outputs: Triton then skips writing floats as text."""
    def tensor(name: str, rows) -> dict:
        texts = [row[0].decode("utf-8") if isinstance(row[0], bytes) else str(row[0]) for row in rows]
        return {"name": name, "shape": [len(texts), 1], "datatype": "BYTES", "data": texts}

    bodies = []
    for batch in batches:
        inputs = [tensor(contract.INPUT_TEXT, batch.texts)]
        if with_pairs and batch.pairs is not None:
            inputs.append(tensor(contract.INPUT_TEXT_PAIR, batch.pairs))
        bodies.append(json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}))
    return bodies


def openai_bodies(texts: Sequence[str], model: str) -> list[str]:
    """OpenAI-style ``/embeddings`` bodies, one text each."""
    return [json.dumps({"model": model, "input": [text]}) for text in texts]


def run_wrk(url: str, bodies: Sequence[str], concurrency: int, seconds: float, timeout_s: float = 60.0) -> WrkRun:
    """POST ``bodies`` in turn to ``url`` from ``concurrency`` connections for ``seconds``
    (whole seconds: wrk's unit; at least 1)."""
    if not bodies:
        raise ValueError("no request bodies to send")
    with tempfile.TemporaryDirectory(prefix="hf2triton-wrk-") as tmp:
        folder = Path(tmp)
        (folder / "load.lua").write_text(SCRIPT)
        (folder / "bodies.jsonl").write_text("\n".join(bodies) + "\n")
        command = [wrk_path(), "--threads", "1", "--connections", str(concurrency),
                   "--duration", f"{max(1, math.ceil(seconds - 1e-9))}s", "--timeout", f"{math.ceil(timeout_s)}s",
                   "--script", str(folder / "load.lua"), url]
        environment = {**os.environ, "HF2TRITON_WRK_BODIES": str(folder / "bodies.jsonl"),
                       "HF2TRITON_WRK_RESULT": str(folder / "result.json")}
        done = subprocess.run(command, capture_output=True, text=True, env=environment,
                              timeout=seconds + timeout_s + 30)
        result = folder / "result.json"
        if done.returncode != 0 or not result.exists():
            raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-800:]}")
        return parse_result(json.loads(result.read_text()))


def parse_result(raw: dict) -> WrkRun:
    """The Lua script's JSON as a :class:`WrkRun`: ``requests`` − non-2xx answers were answered.

    wrk's latency histogram does not match its request count exactly (it also holds the
    answers to requests still in flight at the end, and the non-2xx answers, without
    telling them apart): the answered count is drawn from it evenly, keeping its shape."""
    recorded = sorted(float(value) for value, count in raw["latency_us"] for _ in range(int(count)))
    errors = sum(int(raw[kind]) for kind in ("connect", "read", "write", "status", "timeout"))
    answered = min(len(recorded), max(0, int(raw["requests"]) - int(raw["status"])))
    step = len(recorded) / answered if answered else 0.0
    latencies = tuple(recorded[int((i + 0.5) * step)] for i in range(answered))
    return WrkRun(raw["duration_us"] / 1e6, latencies, errors, raw["first_error"])
