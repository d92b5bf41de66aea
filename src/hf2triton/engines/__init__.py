"""Stage 3, engines: TensorRT plans built from the ONNX variants, and ``hf2triton check``.

``environment`` detects GPUs, the TensorRT runtime and the pinned Triton release (once, for
both sides); ``build`` builds plans through the ONNX parser and writes each plan's
``record`` (one :class:`~hf2triton.engines.record.PlanRecord`); ``check`` reads those records
and compares them with the serving TensorRT, GPU and release.
"""
