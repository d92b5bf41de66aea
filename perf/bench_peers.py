"""Infinity (``infinity-emb``) as a peer, installed and started the way DESIGN.md measured it.

- Installed into its own virtual environment (``perf/.peers/infinity``, git-ignored) with
  the project's torch pin, so its transformers/optimum versions never touch ours.
- Its ONNX engine needs a transformers-style ONNX file inside the checkpoint folder
  (a sentence-transformers-style export fails on ``last_hidden_state``): the checkpoint is
  COPIED (the original is read-only input) and ``optimum-cli export onnx --library-name
  transformers`` writes ``model.onnx`` at the copy's top level (where its engine looks).
- It must be started from inside that folder with ``--model-id .`` (an absolute local path
  fails), and with ``--pooling-method mean``: by default its ONNX engine pools the CLS token
  of this mean-pooling model (cosine 0.23–0.49 against sentence-transformers).
- Its answers are checked against sentence-transformers (cosine) before its speed counts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hf2triton.cpu import CpuMeter
from hf2triton.perf import wrk

log = logging.getLogger(__name__)

# The torch extra brings sentence-transformers, which its torch engine needs.
INFINITY_REQUIREMENTS = ("infinity-emb[server,optimum,torch]==0.0.78", "torch==2.13.0")
ENGINES = ("optimum", "torch")  # Infinity's names: optimum = its ONNX Runtime engine
MIN_COSINE = 0.999  # fp32 against fp32: anything lower means a different model or pooling


class PeerError(RuntimeError):
    """A peer could not be installed, started or trusted (the message says which and why)."""


@dataclass(frozen=True)
class PeerPoint:
    """Closed-loop load on a peer: one text per request, ``concurrency`` requests in flight."""

    concurrency: int
    texts_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    first_error: str
    other_cpu_pct: float


@dataclass(frozen=True)
class AnswerCheck:
    texts: int
    mean_cosine: float
    min_cosine: float

    @property
    def passed(self) -> bool:
        return self.min_cosine >= MIN_COSINE


def venv_script(venv: Path, script: str) -> list[str]:
    """A console script of ``venv`` run by the venv's python: its shebang names the folder the
    venv was created in, which breaks when the checkout (and ``perf/.peers``) moves."""
    return [str(venv / "bin" / "python"), str(venv / "bin" / script)]


def infinity_command(venv: Path, engine: str, port: int, batch_size: int = 32) -> list[str]:
    """The command line DESIGN.md measured: relative model id, mean pooling, CPU, no URL prefix."""
    if engine not in ENGINES:
        raise PeerError(f"unknown Infinity engine {engine!r}: choose one of {', '.join(ENGINES)}")
    return [*venv_script(venv, "infinity_emb"), "v2", "--model-id", ".", "--engine", engine, "--device", "cpu",
            "--port", str(port), "--batch-size", str(batch_size), "--url-prefix", "", "--pooling-method", "mean"]


def install_infinity(venv: Path) -> Path:
    """Create the peer's venv and install Infinity there, once; returns the venv."""
    marker = venv / "hf2triton-requirements.txt"  # what was installed, so a changed pin reinstalls
    wanted = "\n".join(INFINITY_REQUIREMENTS) + "\n"
    if marker.exists() and marker.read_text() == wanted and (venv / "bin" / "infinity_emb").exists():
        return venv
    log.warning("installing %s into %s (once; a few minutes)", " ".join(INFINITY_REQUIREMENTS), venv)
    steps = ([] if (venv / "bin" / "pip").exists() else [[sys.executable, "-m", "venv", str(venv)]])
    steps.append([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *INFINITY_REQUIREMENTS])
    for command in steps:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise PeerError(f"cannot install Infinity ({' '.join(command)}): {done.stderr.strip()[-500:]}")
    marker.write_text(wanted)
    return venv


def peer_environment(home: Path) -> dict[str, str]:
    """Offline, no telemetry, caches inside the benchmark's work folder."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(home), "INFINITY_ANONYMOUS_USAGE_STATS": "0",
            "DO_NOT_TRACK": "1", "TOKENIZERS_PARALLELISM": "false"}


def prepare_model_folder(venv: Path, checkpoint: Path, folder: Path) -> Path:
    """A writable copy of the checkpoint with a transformers-style ``onnx/model.onnx`` inside."""
    if (folder / "model.onnx").exists():
        return folder
    shutil.copytree(checkpoint, folder, dirs_exist_ok=True)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)  # the installed package's files are read-only
    command = [*venv_script(venv, "optimum-cli"), "export", "onnx", "--library-name", "transformers",
               "--task", "feature-extraction", "--model", ".", "onnx"]
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=peer_environment(folder.parent))
    if done.returncode != 0 or not (folder / "onnx" / "model.onnx").exists():
        raise PeerError(f"optimum-cli could not export the checkpoint for Infinity: {done.stderr.strip()[-800:]}")
    # Infinity's ONNX engine finds the file only at the folder's top level (not in onnx/).
    (folder / "onnx" / "model.onnx").rename(folder / "model.onnx")
    shutil.rmtree(folder / "onnx")
    return folder


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class InfinityServer:
    """``with InfinityServer(...) as server:`` starts it in the model folder and waits for /health."""

    def __init__(self, venv: Path, folder: Path, engine: str, log_file: Path, ready_timeout_s: float = 600) -> None:
        self.command = infinity_command(venv, engine, free_port())
        self.folder, self.engine, self.log_file, self.ready_timeout_s = folder, engine, log_file, ready_timeout_s
        self.url = f"http://127.0.0.1:{self.command[self.command.index('--port') + 1]}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> InfinityServer:
        with self.log_file.open("wb") as sink:
            self.process = subprocess.Popen(self.command, cwd=self.folder, stdout=sink, stderr=subprocess.STDOUT,
                                            env=peer_environment(self.folder.parent), start_new_session=True)
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log_file.read_text(errors="replace")[-1500:]
                raise PeerError(f"Infinity ({self.engine}) exited with {self.process.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(1)
        self.__exit__(None, None, None)
        raise PeerError(f"Infinity ({self.engine}) not healthy after {self.ready_timeout_s:.0f} s; see {self.log_file}")

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()

    @property
    def pgid(self) -> int:
        return self.process.pid  # start_new_session: it leads its own process group


def embed(url: str, texts: list[str]) -> np.ndarray:
    """One OpenAI-style request for ``texts``; the embeddings in input order."""
    body = json.dumps({"model": ".", "input": texts}).encode()
    request = urllib.request.Request(f"{url}/embeddings", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        data = json.loads(response.read())["data"]
    return np.array([item["embedding"] for item in sorted(data, key=lambda item: item["index"])], dtype=np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def check_answers(url: str, texts: list[str], reference: np.ndarray) -> AnswerCheck:
    """Infinity's embeddings of ``texts`` against sentence-transformers' (``reference``)."""
    got = np.concatenate([embed(url, texts[i:i + 16]) for i in range(0, len(texts), 16)])
    if got.shape != reference.shape:
        raise PeerError(f"Infinity answered {got.shape} embeddings, sentence-transformers {reference.shape}")
    values = cosines(got, reference)
    return AnswerCheck(len(texts), float(values.mean()), float(values.min()))


async def _closed_loop(url: str, texts: list[str], concurrency: int, warmup_s: float, seconds: float):
    import aiohttp

    latencies: list[float] = []
    errors, first_error, measuring = 0, "", False
    stop_at = time.perf_counter() + warmup_s + seconds
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def worker(offset: int) -> None:
            nonlocal errors, first_error
            index = offset
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    async with session.post(f"{url}/embeddings",
                                            json={"model": ".", "input": [texts[index % len(texts)]]}) as response:
                        await response.read()
                        if response.status != 200:
                            raise RuntimeError(f"HTTP {response.status}")
                    if measuring:
                        latencies.append(time.perf_counter() - started)
                except Exception as error:  # noqa: BLE001 - counted and reported, never hidden
                    if measuring:
                        errors += 1
                        first_error = first_error or repr(error)
                index += concurrency

        tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
        await asyncio.sleep(warmup_s)
        measuring, began = True, time.perf_counter()
        await asyncio.gather(*tasks)
        return latencies, errors, first_error, time.perf_counter() - began


def measure_peer_wrk(server: InfinityServer, texts: list[str], concurrency: int, seconds: float,
                     warmup_s: float = 1.0) -> PeerPoint:
    """The closed loop sent by wrk, windowed like the served cells: a warm-up run, then
    windows of a third of ``seconds`` until three agree within 10 % (at most six)."""
    from hf2triton.perf.sweep import is_stable

    url, bodies, meter = f"{server.url}/embeddings", wrk.openai_bodies(texts, "."), CpuMeter(server.pgid)
    wrk.drain(wrk.run_wrk(url, bodies, concurrency, warmup_s))
    before = meter.sample()
    run = wrk.run_wrk(url, bodies, concurrency, seconds / 3, 6, lambda windows: is_stable(windows, 3, 10.0))
    usage = meter.usage(before, meter.sample())
    wrk.drain(run)
    answered, rate = run.settled(3)
    ms = np.array(run.latencies_us or (float("nan"),)) / 1000
    return PeerPoint(concurrency, rate, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)),
                     answered, run.errors, run.first_error, usage.other_pct)


def measure_peer(server: InfinityServer, texts: list[str], concurrency: int, seconds: float,
                 load_generator: str = "asyncio", warmup_s: float = 1.0) -> PeerPoint:
    """Texts/s and latency of ``server`` under closed-loop load (from aiohttp clients, or
    wrk), and other processes' CPU meanwhile (wrk's counts as ours once it has exited)."""
    if load_generator == "wrk":
        return measure_peer_wrk(server, texts, concurrency, seconds, warmup_s)
    meter = CpuMeter(server.pgid)
    before = meter.sample()
    latencies, errors, first_error, elapsed = asyncio.run(
        _closed_loop(server.url, texts, concurrency, warmup_s, seconds))
    usage = meter.usage(before, meter.sample())
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return PeerPoint(concurrency, len(latencies) / elapsed, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)),
                     len(latencies), errors, first_error, usage.other_pct)
