"""perf_analyzer ``--input-data`` JSON from real text (standard library only for TEXT data).

    python perf/make_input_data.py                                  # perf/data/text.json from the corpus
    python perf/make_input_data.py --texts my_texts.txt --count 1000 --min-words 20 --max-words 120
    python perf/make_input_data.py --repository model_repository --model all_minilm_l6_v2 \
        --tokens-output perf/data/tokens.json                       # also token ids for the model step

TEXT data (``{"data": [{"TEXT": ["..."]}, ...]}``) drives the ensemble and its tokenizer
step; token data (``{"input_ids": {"content": [...], "shape": [n]}}``) drives the model
step alone and needs the ``tokenizers`` package (run it on the host, not in the SDK
container). Runs from a checkout without installing hf2triton.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hf2triton.errors import Hf2TritonError  # noqa: E402
from hf2triton.perf.corpus import load_texts, texts_of_length  # noqa: E402
from hf2triton.perf.inputs import (  # noqa: E402
    text_input_data,
    token_input_data,
    tokenize_for_model_step,
    write_input_data,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=Path, help="one text per line (default: the shipped corpus)")
    parser.add_argument("--count", type=int, default=500, help="texts to write (default: %(default)s)")
    parser.add_argument("--min-words", type=int, default=5, help="(default: %(default)s)")
    parser.add_argument("--max-words", type=int, default=60, help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", type=Path, default=REPO / "perf" / "data" / "text.json")
    parser.add_argument("--repository", type=Path, help="model repository holding --model (for token data)")
    parser.add_argument("--model", default="all_minilm_l6_v2", help="ensemble name (default: %(default)s)")
    parser.add_argument("--tokens-output", type=Path, help="also write model-step token data here")
    return parser.parse_args(argv)


def write_tokens(args: argparse.Namespace, texts: list[str]) -> Path:
    manifest = json.loads((args.repository / args.model / "hf2triton.json").read_text())
    tokenizer_json = args.repository / f"{args.model}_tokenizer" / "1" / "tokenizer.json"
    rows = tokenize_for_model_step(tokenizer_json, texts, manifest["inputs"], manifest["max_sequence_length"])
    return write_input_data(token_input_data(rows), args.tokens_output)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        texts = texts_of_length(load_texts(args.texts), args.count, args.min_words, args.max_words, args.seed)
        print(f"wrote {write_input_data(text_input_data(texts), args.output)} ({len(texts)} texts)")
        if args.tokens_output:
            if args.repository is None:
                raise Hf2TritonError("--tokens-output needs --repository")
            print(f"wrote {write_tokens(args, texts)}")
    except (Hf2TritonError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
