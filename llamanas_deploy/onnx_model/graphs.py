"""Which ONNX graph a device deploys, and how it is exported.

- `fused` (CPU): `fused.py`, emitted from the sub-network's tensors with ONNX Runtime's fused
  contrib ops (GroupQueryAttention with rotary and the KV cache inside, SkipSimplifiedLayerNorm,
  fused QKV and gate|up MatMuls); its ops have fp32 CPU kernels.
- `dynamo`: `exporter.py`, `torch.onnx.export(dynamo=True)` of the transformers model, where
  the fused ops cannot run it: on CUDA (ONNX Runtime's CUDA GroupQueryAttention takes fp16 /
  bf16 only, and CUDA exports are fp32), and for head sizes the CPU GroupQueryAttention
  refuses (it wants a multiple of 16; LLaMAs have 64 or 128).

The export pipeline and the profiler's `onnxruntime` backend both call `export_graph`, so a
profile times the graph that `llamanas export` deploys.
"""

from __future__ import annotations

from pathlib import Path

from .config import DecoderOnnxConfig

FUSED_DEVICES = ("cpu",)
FUSED_HEAD_MULTIPLE = 16


def graph_for(device: str, config: DecoderOnnxConfig) -> str:
    """"fused" where its kernels take this model on this device, else "dynamo"."""
    return "fused" if device in FUSED_DEVICES and config.head_dim % FUSED_HEAD_MULTIPLE == 0 else "dynamo"


def export_graph(model, config: DecoderOnnxConfig, out_dir: Path, graph: str, precision: str) -> Path:
    """Write the fp32 `out_dir/model.onnx` of the torch sub-network `model` as `graph`, shaped for
    the `precision` it will be deployed at (quantized later, or not); returns its path."""
    if graph == "fused":
        from .fused import export_fused

        return export_fused(model, config, out_dir, fuse_gate_up=precision != "fp32")
    from .exporter import export_onnx

    return export_onnx(model, config, out_dir)
