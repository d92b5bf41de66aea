"""A sentiment-classifier-shaped checkpoint for serving benchmarks: the default model's
encoder (all-MiniLM-L6-v2) under a freshly initialised two-label head.

    PYTHONPATH=src python perf/classifier_checkpoint.py OUTPUT_DIR

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


def write_classifier(output: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    source = default_checkpoint()
    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=len(LABELS), id2label=dict(enumerate(LABELS)),
        label2id={label: i for i, label in enumerate(LABELS)})
    model.save_pretrained(output)
    AutoTokenizer.from_pretrained(source).save_pretrained(output)
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help="folder to write the checkpoint to")
    args = parser.parse_args(argv)
    print(write_classifier(args.output))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
