"""Closed-loop HTTP load from wrk, a load generator written in C.

The asyncio load generator (``sweep.py``) spends about 320 µs of CPU per request in
Python: at 240 requests/s that is 5 % of a 2-core machine taken from the server it
measures (``perf record`` during ``perf/bench.py``'s c16 cell). perf_analyzer, Triton's
own C++ load generator, is not installable here (DESIGN.md); wrk is the light stand-in.
It speaks HTTP/1.1 only, so it measures the HTTP endpoint, and it checks the status of
each answer, not its contents (the asyncio load generator reads every output).

One wrk thread keeps ``concurrency`` connections, each with one request in flight,
sending the request bodies in order (wrapping around), for a whole point: its windows
are counted inside that one run (a Lua script writes each window's answers as it ends),
so no window starts from an idle server or pays for the previous window's requests. The
run stops (SIGINT) once the caller's rule says the windows are enough; then the caller
waits for the server to finish the requests left in flight (:func:`drain`) before it
measures anything else.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hf2triton import contract
from hf2triton.errors import MissingDependencyError

INSTALL_HINT = "install it with `apt-get install wrk` (Debian/Ubuntu) or `brew install wrk` (macOS)"
POLL_S = 0.02  # how often the window file is read

# Runs in wrk's LuaJIT, once per thread (one here) and once in the main state (setup, done).
# Environment: HF2TRITON_WRK_BODIES (one request body per line), HF2TRITON_WRK_WINDOW_US,
# HF2TRITON_WRK_WINDOWS (a line "answered failed" per window as it ends, counted from the
# first request), HF2TRITON_WRK_RESULT (done(): the summary, errors by kind, the first
# failed answer and the latency histogram as [µs, count] pairs).
SCRIPT = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } hf2triton_timespec;
int clock_gettime(int clock, hf2triton_timespec *now);
]]
local clock = ffi.new("hf2triton_timespec")
local function now_us()
  ffi.C.clock_gettime(1, clock)  -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000000 + tonumber(clock.tv_nsec) / 1000
end

local bodies, sent, threads = {}, 0, {}
local window_us, boundary, answered, failed, windows = 0, nil, 0, 0, nil
first_error = ""

function setup(thread) table.insert(threads, thread) end

function init(args)
  for line in io.lines(os.getenv("HF2TRITON_WRK_BODIES")) do bodies[#bodies + 1] = line end
  window_us = tonumber(os.getenv("HF2TRITON_WRK_WINDOW_US"))
  windows = io.open(os.getenv("HF2TRITON_WRK_WINDOWS"), "w")
end

function request()
  if boundary == nil then boundary = now_us() + window_us end
  sent = sent % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[sent])
end

function response(status, headers, body)
  local now = now_us()
  while now >= boundary do  -- close every window that ended before this answer
    windows:write(answered, " ", failed, "\n")
    windows:flush()
    answered, failed, boundary = 0, 0, boundary + window_us
  end
  if status >= 200 and status < 300 then
    answered = answered + 1
  else
    failed = failed + 1
    if first_error == "" then first_error = status .. " " .. body:sub(1, 400) end
  end
end

local function quoted(text)
  return '"' .. text:gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

function done(summary, latency, requests)
  local e = summary.errors
  local histogram = {}
  for i = 1, #latency do
    local value, count = latency(i)
    histogram[#histogram + 1] = string.format("[%d,%d]", value, count)
  end
  local out = io.open(os.getenv("HF2TRITON_WRK_RESULT"), "w")
  out:write(string.format(
    '{"duration_us":%d,"requests":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,'
    .. '"first_error":%s,"latency_us":[%s]}',
    summary.duration, summary.requests, e.connect, e.read, e.write, e.status, e.timeout,
    quoted(threads[1]:get("first_error") or ""), table.concat(histogram, ",")))
  out:close()
end
"""


@dataclass(frozen=True)
class WrkWindow:
    """One window of a run: the answers that completed in it."""

    duration_s: float
    requests: int  # answered with a 2xx status
    errors: int  # answered with another status
    concurrency: int

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.duration_s

    @property
    def mean_latency_us(self) -> float:
        """Little's law for a closed loop with no think time: requests in flight ÷ rate."""
        return self.concurrency / self.requests_per_s * 1e6 if self.requests else math.inf


@dataclass(frozen=True)
class WrkRun:
    """One wrk run: its windows, and the latencies of its answered requests."""

    duration_s: float
    windows: tuple[WrkWindow, ...]
    latencies_us: tuple[float, ...]  # one per request answered with a 2xx status, every window
    errors: int  # other statuses, timeouts, connect/read/write errors
    first_error: str

    @property
    def requests(self) -> int:
        return len(self.latencies_us)

    def settled(self, count: int) -> tuple[int, float]:
        """Answers in the last ``count`` windows (the ones a stability rule agreed on), and
        their rate per second; (0, 0.0) without windows."""
        used = self.windows[-count:]
        duration = sum(window.duration_s for window in used)
        answered = sum(window.requests for window in used)
        return answered, answered / duration if duration else 0.0

    @property
    def longest_us(self) -> float:
        return max(self.latencies_us, default=0.0)


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


def run_wrk(url: str, bodies: Sequence[str], concurrency: int, window_s: float, max_windows: int = 1,
            enough: Callable[[list[WrkWindow]], bool] | None = None, timeout_s: float = 60.0) -> WrkRun:
    """POST ``bodies`` in turn to ``url`` from ``concurrency`` connections, counting answers in
    windows of ``window_s``; stop after ``max_windows`` windows, or as soon as ``enough``
    (given the windows so far) says so."""
    if not bodies:
        raise ValueError("no request bodies to send")
    with tempfile.TemporaryDirectory(prefix="hf2triton-wrk-") as tmp:
        folder = Path(tmp)
        (folder / "load.lua").write_text(SCRIPT)
        (folder / "bodies.jsonl").write_text("\n".join(bodies) + "\n")
        (folder / "windows.txt").touch()
        seconds = math.ceil(max_windows * window_s) + 2  # wrk's own bound: the windows, and slack to reach them
        command = [wrk_path(), "--threads", "1", "--connections", str(concurrency), "--duration", f"{seconds}s",
                   "--timeout", f"{math.ceil(timeout_s)}s", "--script", str(folder / "load.lua"), url]
        environment = {**os.environ, "HF2TRITON_WRK_BODIES": str(folder / "bodies.jsonl"),
                       "HF2TRITON_WRK_WINDOW_US": str(round(window_s * 1e6)),
                       "HF2TRITON_WRK_WINDOWS": str(folder / "windows.txt"),
                       "HF2TRITON_WRK_RESULT": str(folder / "result.json")}
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=environment)
        windows = _follow_windows(process, folder / "windows.txt", window_s, concurrency, max_windows, enough)
        try:
            stdout, stderr = process.communicate(timeout=timeout_s + 30)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        result = folder / "result.json"
        if not result.exists() or process.returncode not in (0, -signal.SIGINT):
            raise RuntimeError(f"wrk failed ({process.returncode}): {(stderr or stdout).strip()[-800:]}")
        return parse_result(json.loads(result.read_text()), windows)


def _follow_windows(process: subprocess.Popen, path: Path, window_s: float, concurrency: int, max_windows: int,
                    enough: Callable[[list[WrkWindow]], bool] | None) -> tuple[WrkWindow, ...]:
    """Read windows as wrk closes them; interrupt it (it then reports) when they are enough."""
    windows: list[WrkWindow] = []
    with path.open() as lines:
        pending = ""
        while True:
            finished = process.poll() is not None
            pending += lines.read()
            *complete, pending = pending.split("\n")
            for line in complete:
                answered, failed = (int(word) for word in line.split())
                windows.append(WrkWindow(window_s, answered, failed, concurrency))
            if len(windows) >= max_windows or (complete and enough is not None and enough(windows)):
                if not finished:
                    process.send_signal(signal.SIGINT)
                break
            if finished:
                break
            time.sleep(POLL_S)
    return tuple(windows[:max_windows])


def parse_result(raw: dict, windows: tuple[WrkWindow, ...] = ()) -> WrkRun:
    """The Lua script's JSON as a :class:`WrkRun`: ``requests`` − failed answers were answered.

    wrk's latency histogram does not match its request count exactly (it also holds the
    answers to requests still in flight at the end, and the failed answers, without
    telling them apart): the answered count is drawn from it evenly, keeping its shape."""
    recorded = sorted(float(value) for value, count in raw["latency_us"] for _ in range(int(count)))
    errors = sum(int(raw[kind]) for kind in ("connect", "read", "write", "status", "timeout"))
    answered = min(len(recorded), max(0, int(raw["requests"]) - int(raw["status"])))
    step = len(recorded) / answered if answered else 0.0
    latencies = tuple(recorded[int((i + 0.5) * step)] for i in range(answered))
    return WrkRun(raw["duration_us"] / 1e6, windows, latencies, errors, raw["first_error"])


def drain(run: WrkRun, margin_s: float = 0.05) -> None:
    """Wait until the requests a stopped run left in flight are answered: the server works
    on them after wrk closes their connections, and would slow whatever is measured next.
    Each was sent before the run ended, so it is done within the run's longest latency."""
    time.sleep(run.longest_us / 1e6 + margin_s)
