"""A sentiment-classifier-shaped checkpoint for serving benchmarks: the default model's
encoder (all-MiniLM-L6-v2) under a freshly initialised two-label head (``--reranker``:
one label, a cross-encoder's shape, served as ``rerank``).

    PYTHONPATH=src python perf/classifier_checkpoint.py OUTPUT_DIR [--reranker]

The head's weights are random (seeded), so its labels mean nothing; what it costs to
serve is what a fine-tuned classifier of this size costs, which is what a benchmark of
the classifier path (its packed graph, its head) needs without a download.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hf2triton.export.checkpoint import default_checkpoint  # noqa: E402

LABELS = ("NEGATIVE", "POSITIVE")


def write_classifier(output: Path, seed: int = 0, reranker: bool = False) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    source = default_checkpoint()
    labels = ("LABEL_0",) if reranker else LABELS  # one label: a cross-encoder
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)})
    model.save_pretrained(output)
    AutoTokenizer.from_pretrained(source).save_pretrained(output)
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="folder to write the checkpoint to")
    parser.add_argument("--reranker", action="store_true", help="one label: a cross-encoder, served as rerank")
    args = parser.parse_args(argv)
    print(write_classifier(args.output, reranker=args.reranker))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
