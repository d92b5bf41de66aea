"""Stage 3, engines: TensorRT plans built from the ONNX variants, and ``hf2triton check``.

``build`` builds plans through the ONNX parser; ``check`` compares each plan's record with
the serving TensorRT, GPU and Triton release.
"""
