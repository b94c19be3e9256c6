"""llamanas-deploy: hardware-aware LLaMA-NAS, from device profile to ONNX Runtime artifact."""

__version__ = "0.1.0"
