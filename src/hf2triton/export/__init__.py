"""Stage 1, export: read the checkpoint, export it to ONNX, check parity with PyTorch.

``checkpoint`` (inspect and fingerprint a local checkpoint) → ``peft`` (merge LoRA adapters)
→ ``onnx_export`` (torch → ONNX) → ``parity`` (ONNX Runtime vs PyTorch); ``tokenization``
derives the served tokenizer and its settings from the checkpoint.
"""
