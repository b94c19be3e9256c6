"""Which ONNX graph a device deploys, at which precisions, and how it is exported.

- `fused` (CPU): `fused.py`, emitted from the sub-network's tensors with ONNX Runtime's fused
  contrib ops (GroupQueryAttention with rotary and the KV cache inside, SkipSimplifiedLayerNorm,
  fused QKV and gate|up MatMuls); its ops have fp32 CPU kernels.
- `dynamo`: `exporter.py`, `torch.onnx.export(dynamo=True)` of the transformers model, where
  the fused ops cannot run it: on CUDA, and for head sizes the CPU GroupQueryAttention refuses
  (it wants a multiple of 16; LLaMAs have 64 or 128).

Each device deploys its graph in one dtype (`GRAPH_DTYPES`): float32 on the CPU, float16 on
CUDA (`fp16.py`: the CUDA provider's fast kernels are fp16, and weights, activations and the KV
cache take half the bytes). `DEPLOYED_PRECISIONS` is what `llamanas export` writes for each
device: on CUDA `fp16` is that graph and `int4` adds MatMulNBits (fp16 scales) over it; int8
(8-bit MatMulNBits, built and verified for the CPU graph) is refused there (`refusal`).

The export pipeline and the profiler's `onnxruntime` backend both call `export_graph` (and
`export_quantized`), so a profile times the graph that `llamanas export` deploys.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from dataclasses import replace
from pathlib import Path

from ..errors import BadInputError
from .config import ONNX_NAME, DecoderOnnxConfig
from .fp16 import export_fp16
from .fused import export_fused, quantization_note
from .quantize import QuantSettings, quantize

FUSED_DEVICES = ("cpu",)
FUSED_HEAD_MULTIPLE = 16
GRAPH_DTYPES = {"cpu": "float32", "cuda": "float16"}
DEPLOYED_PRECISIONS = {"cpu": ("fp32", "int8", "int4"), "cuda": ("fp16", "int4")}
DEFAULT_PRECISIONS = {"cpu": "fp32", "cuda": "fp16"}
_WHY_NOT = {
    ("cuda", "fp32"): "the CUDA artifact is float16 (fp16, or int4 MatMulNBits over it)",
    ("cuda", "int8"): "int8 (8-bit MatMulNBits) is built and verified for the CPU graph only; "
                      "use int4 (MatMulNBits over fp16) or fp16",
    ("cpu", "fp16"): "fp16 is the CUDA artifact; the CPU graph is float32 (fp32, int8 or int4)",
}  # fmt: skip


def graph_for(device: str, config: DecoderOnnxConfig) -> str:
    """"fused" where its kernels take this model on this device, else "dynamo"."""
    return "fused" if device in FUSED_DEVICES and config.head_dim % FUSED_HEAD_MULTIPLE == 0 else "dynamo"


def graph_dtype(device: str) -> str:
    """The dtype of the graph `device` deploys (weights, logits, KV cache)."""
    return GRAPH_DTYPES[device]


def check_precision(device: str, precision: str) -> None:
    """`BadInputError` (param "precision") when `llamanas export` does not deploy `precision` on `device`."""
    allowed = DEPLOYED_PRECISIONS[device]
    if precision not in allowed:
        why = _WHY_NOT.get((device, precision), f"expected one of {list(allowed)}")
        raise BadInputError(f"{precision!r} on {device}: {why}", param="precision")


def export_graph(model, config: DecoderOnnxConfig, out_dir: Path, graph: str, precision: str,
                 dtype: str = "float32") -> Path:  # fmt: skip
    """Write `out_dir/model.onnx` of the torch sub-network `model` as `graph` in `dtype`, shaped for
    the `precision` it will be deployed at (quantized later, or not); returns its path. `model`
    is not changed (a float16 graph is exported from a copy)."""
    if dtype == "float16":  # always the dynamo graph (the fused ops' CUDA kernels are not used)
        return export_fp16(copy.deepcopy(model), config, out_dir)
    if graph == "fused":
        return export_fused(model, config, out_dir, fuse_gate_up=precision != "fp32")
    from .exporter import export_onnx

    return export_onnx(model, config, out_dir)


def export_quantized(model, config: DecoderOnnxConfig, out_dir: Path, graph: str, quant: QuantSettings,
                     dtype: str = "float32", base: Path | None = None) -> QuantSettings:  # fmt: skip
    """Write `out_dir/model.onnx`, the torch sub-network `model` as `graph` quantized at `quant`;
    returns `quant` with what was done.

    The fused graph is quantized as it is built, from the torch weights. The dynamo graph is
    exported unquantized first (`base`, when the caller already has it; else in scratch space
    inside `out_dir`, removed after), then quantized by ORT's quantizer.
    """

    if graph == "fused":
        export_fused(model, config, out_dir, quant=quant)
        return replace(quant, reason=f"{quant.reason}; {quantization_note(model, quant)}")
    with contextlib.ExitStack() as cleanup:
        if base is None:
            scratch = Path(cleanup.enter_context(tempfile.TemporaryDirectory(dir=out_dir, prefix=".unquantized-")))
            base = export_graph(model, config, scratch, graph, quant.precision, dtype)
        return quantize(base, out_dir / ONNX_NAME, quant, (base.parent / f"{ONNX_NAME}.data").exists())
