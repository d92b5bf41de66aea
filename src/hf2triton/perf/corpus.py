"""Real sample texts for load generation: random bytes tell nothing about a tokenizer.

The shipped corpus (``hf2triton/data/corpus.txt``) holds ~100 English reviews,
questions, news and legal sentences plus a few in other languages, 5 to ~60 words.
:func:`texts_of_length` concatenates them into texts of a chosen word-length range.
"""

from __future__ import annotations

import random
from importlib import resources
from pathlib import Path

from hf2triton.errors import Hf2TritonError

CORPUS_RESOURCE = "corpus.txt"


def corpus_path() -> Path:
    return Path(str(resources.files("hf2triton.data").joinpath(CORPUS_RESOURCE)))


def load_texts(path: Path | None = None) -> list[str]:
    """Non-empty lines of ``path`` (default: the shipped corpus)."""
    source = path or corpus_path()
    try:
        lines = Path(source).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise Hf2TritonError(f"cannot read texts from {source}: {exc}") from exc
    texts = [line.strip() for line in lines if line.strip()]
    if not texts:
        raise Hf2TritonError(f"{source} holds no text (one text per line expected)")
    return texts


def texts_of_length(texts: list[str], count: int, min_words: int, max_words: int, seed: int = 0) -> list[str]:
    """``count`` texts of ``min_words``..``max_words`` words, built from consecutive corpus lines."""
    if not 1 <= min_words <= max_words:
        raise Hf2TritonError(f"word range {min_words}..{max_words} is empty")
    rng = random.Random(seed)
    built = []
    for _ in range(count):
        target = rng.randint(min_words, max_words)
        words: list[str] = []
        start = rng.randrange(len(texts))
        while len(words) < target:
            words.extend(texts[start % len(texts)].split())
            start += 1
        built.append(" ".join(words[:target]))
    return built
