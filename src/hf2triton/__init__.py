"""hf2triton: one command from a Hugging Face checkpoint to a served Triton ensemble.

Stages, one module each: ``checkpoint`` (read the input) → ``onnx_export`` →
``parity`` → ``repository`` (Triton configs from ``triton_config``) → ``serving``
(the bundled CPU tritonserver) → ``client``. ``pipeline.export_checkpoint`` runs
the export stages; ``cli`` is the command line.
"""

__version__ = "0.1.0"
