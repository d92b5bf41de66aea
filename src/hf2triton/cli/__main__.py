"""``python -m hf2triton.cli``."""

import sys

from hf2triton.cli import main

sys.exit(main())
