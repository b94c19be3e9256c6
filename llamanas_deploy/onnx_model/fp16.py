"""The fp16 graph that the CUDA execution provider runs (`llamanas export --device cuda`).

The transformers model is cast to float16 and exported by the same dynamo exporter as the
fp32 graph (`exporter.export_onnx`): weights, activations, logits and the KV cache inputs /
outputs are float16, while transformers computes RMSNorm and the rotary angles in float32
inside its forward, so the graph does too (Cast nodes around them) -- no float16 converter
guessing which ops overflow. int4 for CUDA is `MatMulNBits` over this graph (float16
activations and scales). The graph is built and checked on the CPU (ONNX Runtime's CPU
provider runs it, slowly); the CUDA provider runs it on the GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import DecoderOnnxConfig

# max abs difference of logits / KV against the torch model, as a fraction of the largest
# |logit| (at least 1): float16 keeps ~3 significant digits, and errors add up over layers
FP16_RELATIVE_TOLERANCE = 2e-2
ONNX_FLOAT16 = "tensor(float16)"


def export_fp16(model, config: DecoderOnnxConfig, out_dir: Path) -> Path:
    """Write the float16 `out_dir/model.onnx` of the torch sub-network `model` (cast in place)."""
    import torch

    from .exporter import export_onnx

    return export_onnx(model.to(torch.float16), config, out_dir)


def kv_dtype(session) -> type:
    """numpy dtype of an ORT session's KV cache inputs (float16 graphs take float16 past)."""
    past = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    return np.float16 if past and past[0].type == ONNX_FLOAT16 else np.float32
