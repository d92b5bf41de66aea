"""Triton python-backend models, copied verbatim into repositories as ``model.py``.

Each module here is self-contained (numpy, tokenizers, onnxruntime only) because
it runs inside tritonserver's python stub, where hf2triton may not be installed.
Their pure functions are also what hf2triton runs in-process (parity checks,
benchmarks), so the served pipeline and the checked one are the same code.
"""
