"""Exporters (GGUF, ONNX) and the shared parity gate; heavy imports stay inside each module."""
