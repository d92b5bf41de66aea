"""Text sets shipped with hf2triton: calibration.txt and heldout.txt."""
