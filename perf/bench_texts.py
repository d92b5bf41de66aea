"""The benchmark's texts: 600 real English news sentences the project has never seen.

Where they come from: the Lee background corpus (Lee, Pincombe & Welsh 2005: 300 ABC
Australian news articles) that gensim ships as test data
(``gensim/test/test_data/lee_background.cor`` in the ``gensim`` wheel on PyPI, LGPL-2.1).
The wheel is fetched once with pip (``pip download --no-deps``: nothing is installed and
nothing is committed), the file is read straight from the wheel, split into sentences,
and 600 are drawn with a fixed seed after dropping any sentence that appears in the
project's own texts (``src/hf2triton/data/``). The result is cached in
``perf/.peers/texts/`` (git-ignored). Lengths: median ~22 words, a few up to ~75.

``--texts FILE`` (one text per line) replaces them with your own.
"""

from __future__ import annotations

import logging
import random
import re
import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

log = logging.getLogger(__name__)

GENSIM_WHEEL = "gensim==4.4.0"
LEE_MEMBER = "gensim/test/test_data/lee_background.cor"
SOURCE = f"{LEE_MEMBER} from the {GENSIM_WHEEL} wheel (Lee background corpus, ABC news)"
COUNT = 600
SEED = 11
# A sentence ends at . ! or ? followed by space and a capital letter or an opening quote.
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


class TextSourceError(RuntimeError):
    """The benchmark texts cannot be found or fetched (the message says how to fix it)."""


def split_sentences(document: str) -> list[str]:
    """Sentences of one article, whitespace-normalised; fragments under 3 words dropped."""
    pieces = (" ".join(piece.split()) for piece in SENTENCE_END.split(document))
    return [piece for piece in pieces if len(piece.split()) >= 3]


def project_texts() -> set[str]:
    """Every line of the project's own text files (corpus, calibration, held-out)."""
    folder = resources.files("hf2triton.data")
    lines: set[str] = set()
    for entry in folder.iterdir():
        if entry.name.endswith(".txt"):
            lines.update(line.strip() for line in entry.read_text(encoding="utf-8").splitlines() if line.strip())
    return lines


def draw(sentences: list[str], excluded: set[str], count: int = COUNT, seed: int = SEED) -> list[str]:
    """``count`` distinct sentences not in ``excluded``, drawn with a fixed seed, in drawn order."""
    unique = list(dict.fromkeys(s for s in sentences if s not in excluded))
    if len(unique) < count:
        raise TextSourceError(f"only {len(unique)} usable sentences, {count} wanted")
    return random.Random(seed).sample(unique, count)


def fetch_wheel(cache: Path) -> Path:
    """The gensim wheel in ``cache``, downloaded once with pip (no install, no dependencies)."""
    found = sorted(cache.glob("gensim-*.whl"))
    if found:
        return found[-1]
    cache.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q",
               "-d", str(cache), GENSIM_WHEEL]
    log.info("fetching the benchmark texts: %s", " ".join(command))
    done = subprocess.run(command, capture_output=True, text=True)
    found = sorted(cache.glob("gensim-*.whl"))
    if done.returncode != 0 or not found:
        raise TextSourceError(f"cannot download {GENSIM_WHEEL} for its news sentences ({done.stderr.strip()[-300:]}); "
                              "pass --texts FILE with one text per line instead")
    return found[-1]


def cached_file(cache: Path) -> Path:
    return cache / f"lee_sentences_{COUNT}.txt"


def cached_or_corpus(cache: Path) -> list[str]:
    """The benchmark's sentences if ``perf/bench.py`` already fetched them into ``cache``,
    else the project's shipped corpus (the measurement scripts never download)."""
    from hf2triton.perf.corpus import load_texts

    cached = cached_file(cache)
    return cached.read_text(encoding="utf-8").splitlines() if cached.is_file() else load_texts()


def benchmark_texts(cache: Path, path: Path | None = None) -> tuple[list[str], str]:
    """(texts, where they come from): ``path`` when given, else the 600 Lee-corpus sentences."""
    if path is not None:
        try:
            texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as error:
            raise TextSourceError(f"cannot read --texts {path}: {error}") from error
        if not texts:
            raise TextSourceError(f"--texts {path} holds no text (one text per line expected)")
        return texts, str(path)
    cached = cached_file(cache)
    if cached.exists():
        return cached.read_text(encoding="utf-8").splitlines(), SOURCE
    with zipfile.ZipFile(fetch_wheel(cache)) as wheel:
        documents = wheel.read(LEE_MEMBER).decode("utf-8").splitlines()
    texts = draw([s for document in documents for s in split_sentences(document)], project_texts())
    cached.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return texts, SOURCE
