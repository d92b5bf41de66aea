"""Measure a served model: a local load generator with perf_analyzer's CSV columns,
perf_analyzer input data for the Triton SDK container, and contention accounting.

Modules: ``corpus`` (real sample texts), ``inputs`` (perf_analyzer ``--input-data``
JSON), ``stats`` (Triton's statistics
API → per-step queue and compute), ``sweep`` (asyncio load over a concurrency range,
stability windows), ``report`` (CSV, JSON, PNG plots). Importing this package is
cheap; only ``sweep`` and ``report`` pull in tritonclient and matplotlib.
"""
