"""Stage 2, precision: faster variants of the fp32 ONNX file behind an accuracy guard.

``calibration`` (texts and token feeds) → ``quantize`` (int8 QDQ, dynamic int8) and ``fp16``
→ ``accuracy`` (the guard: variant vs fp32 on held-out text) → ``variants`` (build, time, select).
"""
