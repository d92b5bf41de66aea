"""Export a Hugging Face checkpoint to a Triton model repository.

    python build/export.py                      # the embedded default model (all-MiniLM-L6-v2)
    python build/export.py PATH/TO/CHECKPOINT   # any local fine-tuned checkpoint
    python build/export.py --help               # every option

Same as `hf2triton export`; the work is done by hf2triton.pipeline.export_checkpoint.
"""

import sys
from pathlib import Path

try:
    from hf2triton.cli import export_main
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from hf2triton.cli import export_main

if __name__ == "__main__":
    sys.exit(export_main())
