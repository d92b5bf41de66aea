"""hf2triton: one command from a Hugging Face checkpoint to a served Triton ensemble.

Stages, a package each, imports flowing one way:
``export`` (checkpoint → ONNX → parity) → ``precision`` (fp16/int8 variants behind the
accuracy guard) → ``engines`` (TensorRT plans, ``hf2triton check``) → ``repository``
(Triton configs, layout, versions, crash-safe install) → ``serving`` (the bundled CPU
tritonserver, supervision, health) → ``client`` (HTTP/gRPC, sync and async, verify) →
``gateway`` (OpenAI/TEI-compatible HTTP). ``tasks`` is the one task table,
``errors`` the one error tree, ``pipeline.export_checkpoint`` runs the export stages,
``cli`` is the command line and ``backends`` the step code copied into repositories.
"""

__version__ = "0.1.0"
