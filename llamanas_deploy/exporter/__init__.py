"""Export stage: sub-network -> verified, quantized, measured ONNX Runtime artifact.

- `export(supernet, space, subnet, ExportSettings(...), out=..., predictor=..., bench=BenchSettings(...))`
  runs it end to end (`pipeline`) from the ONNX pieces in `onnx_model/` (I/O config, exporter,
  quantizer, artifact files) and returns the `runtime.Artifact` it made;
- `verify` checks ORT against torch and the quantized model against fp32;
- `bench(artifact, BenchSettings(...))` measures an artifact with the profiler's protocol (`measure`) into a `BenchResult`.

Names are imported on first use: importing this package imports nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "export": "pipeline", "ExportSettings": "pipeline",
    "bench": "measure", "BenchSettings": "measure", "BenchResult": "measure",
    "export_gguf": "gguf", "GGUFSettings": "gguf",
}  # fmt: skip

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value
