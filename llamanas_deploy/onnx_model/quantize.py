"""Weight quantization of an exported decoder with ONNX Runtime's own quantizer.

Both precisions are weight-only, blockwise, symmetric `MatMulNBits` (`MatMulNBitsQuantizer`,
round to nearest): int8 stores 8-bit blocks, int4 4-bit ones; `accuracy_level` 4 computes in
int8 on the CPU (activations quantized per block at run time, fast), 0 keeps float compute.
Chosen by measurement on SmolLM2-135M (30 layers, full network, 4,096 held-out tokens; fp32
perplexity 24.30; the README's "Quantization on a real model" keeps the table): dynamic int8
(`quantize_dynamic`: activations quantized per tensor) gave 48.7 (+100 %) per channel with
7-bit range, 70.9 per tensor, and overflowed without the reduced range on AVX2 (the outliers
of `down_proj`'s input); 8-bit blocks of 32 give 24.35 (+0.2 %), blocks of 128 24.65 (+1.4 %).
int4 blocks of 32 give 34.2 (+41 %), of 128 46.9 (+93 %). HQQ (29.6) needs float zero points,
which ORT 1.32 runs ~25x slower on the CPU; GPTQ needs Intel Neural Compressor. Known gap: 8-bit
blocks at accuracy level 4 answer a chat prompt the fp32 graph answers right differently, on AVX2
and AVX-512 VNNI CPUs alike (the GenAI builder's int8 too); float compute (level 0) is ~1 s/token.

On the fused CPU graph (`fused.py`) every MatMul is quantized as the graph is built, the LM head
included: `quantize_blocks` (ORT's own block quantizer, what `MatMulNBitsQuantizer` calls) turns
each torch weight into its blocks, so no float32 graph is loaded to be quantized; the embedding
reads blocks through `GatherBlockQuantized` (the LM head's when the two are tied: one copy in the
file). On the dynamo graph (CUDA, small heads) `quantize` runs `MatMulNBitsQuantizer` over the
exported file with the paper's recipe ("INT8 on all decoder linear layers"): the decoder layers'
MatMuls are quantized, the LM head (the MatMul producing `logits`) stays unquantized (fp16 in the
CUDA graph, whose int4 MatMulNBits take float16 activations and scales).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..concepts import check_choice
from ..errors import BadInputError

BLOCK_SIZES = (16, 32, 64, 128, 256)
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
BITS = {"int8": 8, "int4": 4}
# (precision, device): (block size, accuracy level), measured (see the module docstring). CUDA int4:
# blocks of 32 over the float16 graph (the GenAI builder's CUDA default); level 0 = unset, the CUDA
# kernel computes in fp16 whatever it is. int8 has no CUDA artifact (`graphs.refusal`).
DEFAULTS = {("int8", "cpu"): (32, 4), ("int4", "cpu"): (32, 4), ("int4", "cuda"): (32, 0)}


@dataclass(frozen=True)
class QuantSettings:
    """How an artifact's weights were quantized, and why; recorded in the manifest."""

    precision: str
    method: str = "none"
    bits: int | None = None
    block_size: int | None = None
    accuracy_level: int | None = None
    reason: str = ""
    excluded_nodes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}


def settings_for(
    precision: str, device: str, block_size: int | None = None, accuracy_level: int | None = None
) -> QuantSettings | None:
    """How `precision` is quantized on `device` (None for fp32 / fp16): what export and the profiler
    both use. The given block size and accuracy level, or the measured defaults."""
    if precision not in BITS:
        return None
    from .graphs import check_precision

    check_precision(device, precision)
    default_block, default_level = DEFAULTS[(precision, device)]
    block = default_block if block_size is None else block_size
    level = default_level if accuracy_level is None else accuracy_level
    check_blocks(block, level)
    given = "given" if block_size is not None or accuracy_level is not None else f"defaults for {precision} on {device}"
    reason = f"{BITS[precision]}-bit blocks of {block}, accuracy level {level} ({given})"
    return QuantSettings(precision, "MatMulNBits", BITS[precision], block, level, reason)


def check_blocks(block_size: int | None, accuracy_level: int | None) -> None:
    """`BadInputError` naming the parameter when a given setting is not one MatMulNBits takes."""
    for param, value, choices in (
        ("block_size", block_size, BLOCK_SIZES), ("accuracy_level", accuracy_level, ACCURACY_LEVELS)
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


def quantize_blocks(weight_t: np.ndarray, settings: QuantSettings) -> tuple[np.ndarray, np.ndarray]:
    """The [in, out] MatMul weight `weight_t` as MatMulNBits stores it: blocks [out, in / block, block
    bytes] (uint8) and scales [out, in / block], from ORT's own symmetric round-to-nearest quantizer."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        DefaultWeightOnlyQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=settings.block_size, is_symmetric=True,
                                          accuracy_level=settings.accuracy_level, bits=settings.bits)  # fmt: skip
    blocks, scales, _ = DefaultWeightOnlyQuantizer(config).qbits_block_quant(np.ascontiguousarray(weight_t, np.float32))
    return blocks, scales


def quantize(src: Path, dst: Path, settings: QuantSettings, external_data: bool) -> QuantSettings:
    """Write the quantized model `dst` from the unquantized dynamo graph `src` (the LM head stays
    unquantized); returns the settings with what was left out."""
    import onnx

    if settings.precision not in BITS:
        raise BadInputError(f"{settings.precision!r}: expected int8 or int4 to quantize", param="precision")
    model = onnx.load(str(src))
    excluded = (lm_head_node(model),)
    with _quiet_quantizer():
        model = _matmul_nbits(model, settings, excluded)
    _save(model, dst, external_data)
    return QuantSettings(**{**asdict(settings), "excluded_nodes": excluded})


def _matmul_nbits(model, settings: QuantSettings, excluded: tuple[str, ...]):
    """ORT's blockwise round-to-nearest quantizer over `model` (a ModelProto); returns the quantized one."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    options = dict(block_size=settings.block_size, is_symmetric=True, accuracy_level=settings.accuracy_level)
    config = DefaultWeightOnlyQuantConfig(**options, op_types_to_quantize=("MatMul",), bits=settings.bits)
    quantizer = MatMulNBitsQuantizer(model, bits=settings.bits, **options, nodes_to_exclude=list(excluded),
                                     algo_config=config)  # fmt: skip
    quantizer.process()
    return quantizer.model.model


def _save(model, dst: Path, external_data: bool) -> None:
    import onnx

    if external_data:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{dst.name}.data", size_threshold=1024)  # fmt: skip
    else:
        onnx.save_model(model, str(dst))


@contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """ORT's quantizers log one INFO line per node and a pre-processing hint on the root logger."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
