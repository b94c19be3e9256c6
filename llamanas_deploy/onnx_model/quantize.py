"""Weight quantization of an exported fp32 decoder with ONNX Runtime's own tools.

- int8: `quantize_dynamic` (MatMulInteger; activations quantized at run time). Without VNNI
  (AVX2 only) the u8 x s8 multiply-add can saturate, so weights are quantized per channel
  with `reduce_range` (7-bit); with VNNI / AMX-INT8 per-tensor weights are exact enough and
  faster. The choice is made from the device's ISA flags and recorded with its reason.
- int4: `MatMulNBitsQuantizer` (weight-only, blockwise); `accuracy_level` 4 computes in int8
  on the CPU (fast), 0 keeps fp32 compute.

As in the paper ("INT8 on all decoder linear layers"), the decoder layers' MatMuls are
quantized; the LM head (the MatMul that produces `logits`) stays fp32.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..concepts import check_choice
from ..errors import BadInputError

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
INT4_ACCURACY_LEVELS = (0, 1, 2, 3, 4)
# per device: (block size, accuracy level); CPU: int8 compute for speed; CUDA kernels ignore the level
INT4_DEFAULTS = {"cpu": (32, 4), "cuda": (32, 0)}


@dataclass(frozen=True)
class QuantSettings:
    """How an artifact's weights were quantized, and why; recorded in the manifest."""

    precision: str
    method: str = "none"
    per_channel: bool | None = None
    reduce_range: bool | None = None
    block_size: int | None = None
    accuracy_level: int | None = None
    reason: str = ""
    excluded_nodes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}


def int8_settings(isa_flags: Sequence[str]) -> QuantSettings:
    """Per-channel + reduced range without VNNI, per-tensor with it (see the module docstring)."""
    vnni = [f for f in VNNI_FLAGS if f in isa_flags]
    if vnni:
        reason = f"CPU has {', '.join(vnni)}: int8 dot products do not saturate, per-tensor weights"
        return QuantSettings("int8", "quantize_dynamic", per_channel=False, reduce_range=False, reason=reason)
    reason = "CPU lacks VNNI (AVX2 u8 x s8 can saturate): per-channel weights with 7-bit reduced range"
    return QuantSettings("int8", "quantize_dynamic", per_channel=True, reduce_range=True, reason=reason)


def int4_settings(device: str, block_size: int | None = None, accuracy_level: int | None = None) -> QuantSettings:
    """MatMulNBits settings: the given ones, or the device's defaults."""
    default_block, default_level = INT4_DEFAULTS[device]
    block = default_block if block_size is None else block_size
    level = default_level if accuracy_level is None else accuracy_level
    check_int4(block, level)
    given = "given" if block_size is not None or accuracy_level is not None else f"defaults for {device}"
    reason = f"block size {block}, accuracy level {level} ({given})"
    return QuantSettings("int4", "MatMulNBits", block_size=block, accuracy_level=level, reason=reason)


def check_int4(block_size: int | None, accuracy_level: int | None) -> None:
    """`BadInputError` naming the parameter when a given int4 setting is not one MatMulNBits takes."""
    for param, value, choices in (
        ("block_size", block_size, INT4_BLOCK_SIZES), ("accuracy_level", accuracy_level, INT4_ACCURACY_LEVELS)
    ):  # fmt: skip
        if value is not None:
            check_choice(value, choices, param)


def lm_head_node(model) -> str:
    """Name of the MatMul that produces `logits` (walking back through reshapes and casts)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    node = producer.get("logits")
    while node is not None and node.op_type != "MatMul":
        node = producer.get(node.input[0])
    if node is None:
        raise BadInputError("exported graph: no MatMul produces 'logits'; cannot tell the LM head apart")
    return node.name


def quantize(src: Path, dst: Path, settings: QuantSettings, external_data: bool) -> QuantSettings:
    """Write the quantized model `dst` from the fp32 model `src`; returns the settings with exclusions."""
    import onnx

    if settings.precision not in ("int8", "int4"):
        raise BadInputError(f"{settings.precision!r}: expected int8 or int4 to quantize", param="precision")
    excluded = (lm_head_node(onnx.load(str(src), load_external_data=False)),)
    with _quiet_quantizer():
        (_int8 if settings.precision == "int8" else _int4)(src, dst, settings, excluded, external_data)
    return QuantSettings(**{**asdict(settings), "excluded_nodes": excluded})


def _int8(src: Path, dst: Path, settings: QuantSettings, excluded: tuple[str, ...], external_data: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        src,
        dst,
        op_types_to_quantize=["MatMul"],
        per_channel=bool(settings.per_channel),
        reduce_range=bool(settings.reduce_range),
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(excluded),
        use_external_data_format=external_data,
    )


def _int4(src: Path, dst: Path, settings: QuantSettings, excluded: tuple[str, ...], external_data: bool) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(
        block_size=settings.block_size, is_symmetric=True, accuracy_level=settings.accuracy_level
    )
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(src)),
        block_size=settings.block_size,
        is_symmetric=True,
        accuracy_level=settings.accuracy_level,
        nodes_to_exclude=list(excluded),
        algo_config=config,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=external_data)


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ORT's quantizers log one INFO line per node and a pre-processing hint on the root logger."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
