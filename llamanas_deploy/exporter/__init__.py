"""Export stage: sub-network -> verified, quantized, measured ONNX Runtime artifact.

- `export(model, space, subnet, out, ExportSettings(...), predictor=..., bench=BenchSettings(...))`
  runs it end to end (`pipeline`) from the ONNX pieces in `onnx_model/` (I/O config, exporter,
  quantizer, artifact files) and returns an `ExportResult`;
- `verify` checks ORT against torch and the quantized model against fp32;
- `bench(artifact_dir, BenchSettings(...))` measures an artifact with the profiler's protocol (`measure`).

Names are imported on first use: importing this package imports nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "export": "pipeline", "ExportSettings": "pipeline", "ExportResult": "pipeline",
    "bench": "measure", "BenchSettings": "measure",
}  # fmt: skip

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value
