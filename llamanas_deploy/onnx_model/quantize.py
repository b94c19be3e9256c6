"""Weight quantization of an exported fp32 decoder with ONNX Runtime's own tools.

- int8: `quantize_dynamic` (MatMulInteger; activations quantized at run time). Without VNNI
  (AVX2 only) the u8 x s8 multiply-add can saturate, so weights are quantized per channel
  with `reduce_range` (7-bit); with VNNI / AMX-INT8 per-tensor weights are exact enough and
  faster. The choice is made from the device's ISA flags and recorded with its reason.
- int4: `MatMulNBitsQuantizer` (weight-only, blockwise); `accuracy_level` 4 computes in int8
  on the CPU (fast), 0 keeps fp32 compute.

On the fused CPU graph (`fused.py`) every MatMul is quantized, the LM head included, and the
embedding reads the LM head's quantized table when the two are tied (one copy in the file):
int8 through `quantize_dynamic` (ORT fuses each into one DynamicQuantizeMatMul; with VNNI /
AMX its prefill is 2x the speed of weight-only 8-bit MatMulNBits at the same decode speed),
the embedding a Gather of the transposed int8 table (ORT folds the Transpose when the session
opens) and its dequantization; int4 through MatMulNBits, the embedding a GatherBlockQuantized
over the LM head's blocks (an untied embedding: ORT's own int4 Gather quantization). On the
dynamo graph (CUDA, small heads) the paper's recipe ("INT8 on all decoder linear layers"):
the decoder layers' MatMuls are quantized, the LM head (the MatMul producing `logits`) stays unquantized
(fp32; fp16 in the CUDA graph, whose int4 MatMulNBits take float16 activations and scales).
"""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..concepts import check_choice
from ..errors import BadInputError

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
INT4_ACCURACY_LEVELS = (0, 1, 2, 3, 4)
# per device: (block size, accuracy level). CPU: int8 compute, and blocks of 128, chosen by measurement
# (benchmarks/export_vs_builder.py, tiny 6 x 576): against blocks of 32, decode 0.91x, prefill 0.87x,
# file 0.87x, held-out perplexity +0.56 % instead of +0.28 % over fp32. CUDA: blocks of 32 (onnxruntime-genai's
# builder default for CUDA) over the float16 graph; level 0 = unset, the CUDA kernel computes in fp16 whatever it is.
INT4_DEFAULTS = {"cpu": (128, 4), "cuda": (32, 0)}


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


def settings_for(
    precision: str, device: str, isa_flags: Sequence[str] = (), block_size: int | None = None,
    accuracy_level: int | None = None,
) -> QuantSettings | None:
    """How `precision` is quantized on `device` (None for fp32 / fp16): what export and the profiler both use.
    int8 on CUDA is `BadInputError` (no CUDA kernels for dynamic quantization)."""
    if precision == "int8":
        if device != "cpu":
            from .graphs import check_precision

            check_precision(device, precision)
        return int8_settings(isa_flags)
    if precision == "int4":
        return int4_settings(device, block_size, accuracy_level)
    return None


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


def quantize(src: Path, dst: Path, settings: QuantSettings, external_data: bool, graph: str = "fused") -> QuantSettings:
    """Write the quantized model `dst` from the fp32 model `src`; returns the settings with exclusions.

    `graph`: "fused" (`fused.py`: every MatMul and the embedding quantized) or "dynamo" (the LM
    head stays fp32).
    """
    import onnx

    if settings.precision not in ("int8", "int4"):
        raise BadInputError(f"{settings.precision!r}: expected int8 or int4 to quantize", param="precision")
    if graph == "fused":
        with _quiet_quantizer():
            note = (_int8_fused if settings.precision == "int8" else _int4_fused)(src, dst, settings, external_data)
        return QuantSettings(**{**asdict(settings), "reason": f"{settings.reason}; {note}"})
    excluded = (lm_head_node(onnx.load(str(src), load_external_data=False)),)
    with _quiet_quantizer():
        (_int8 if settings.precision == "int8" else _int4)(src, dst, settings, excluded, external_data)
    return QuantSettings(**{**asdict(settings), "excluded_nodes": excluded})


def _int8_fused(src: Path, dst: Path, settings: QuantSettings, external_data: bool) -> str:
    """quantize_dynamic on every MatMul of the fused graph; a tied embedding reads the LM head's int8 table."""
    import onnx

    from .fused import LM_HEAD_NODE

    model = onnx.load(str(src))
    tied = _untie_lm_head(model)
    with tempfile.TemporaryDirectory(dir=dst.parent) as scratch:  # its external data, if any, goes with it
        quantized = Path(scratch) / dst.name
        # the contrib ops stop ONNX shape inference: every MatMul here is fp32
        _int8(model, quantized, settings, (), external_data, {"DefaultTensorType": onnx.TensorProto.FLOAT})
        model = onnx.load(str(quantized))
    note = "LM head int8; embedding fp32 (not tied)"
    if tied:
        _share_int8_embedding(model, f"{LM_HEAD_NODE}_quant")
        note = "LM head int8; embedding reads the LM head's int8 table (tied, stored once)"
    _save(model, dst, external_data)
    return note


def _int4_fused(src: Path, dst: Path, settings: QuantSettings, external_data: bool) -> str:
    """MatMulNBits on every MatMul of the fused graph; the embedding shares the LM head's blocks when tied."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    from .fused import EMBEDDING, LM_HEAD_NODE

    model = onnx.load(str(src))
    tied = _untie_lm_head(model)
    hidden = next(t for t in model.graph.initializer if t.name == EMBEDDING).dims[1]
    config = DefaultWeightOnlyQuantConfig(
        block_size=settings.block_size,
        is_symmetric=True,
        accuracy_level=settings.accuracy_level,
        op_types_to_quantize=("MatMul",) if tied else ("MatMul", "Gather"),
    )
    quantizer = MatMulNBitsQuantizer(model, block_size=settings.block_size, is_symmetric=True,
                                     accuracy_level=settings.accuracy_level, algo_config=config)  # fmt: skip
    quantizer.process()
    model = quantizer.model.model
    if not tied:
        note = "LM head int4; embedding int4"
    elif hidden % settings.block_size:
        note = f"LM head int4; embedding fp32 (hidden size {hidden} is not a multiple of the block size)"
    else:
        _share_int4_embedding(model, f"{LM_HEAD_NODE}_Q4", settings.block_size)
        note = "LM head int4; embedding reads the LM head's int4 blocks (tied, stored once)"
    _save(model, dst, external_data)
    return note


def _untie_lm_head(model) -> bool:
    """Give a tied LM head its own [hidden, vocab] initializer, so that the quantizer sees a weight."""
    from onnx import numpy_helper

    from .fused import EMBEDDING, LM_HEAD, LM_HEAD_NODE

    nodes = {n.name: n for n in model.graph.node}
    head = nodes[LM_HEAD_NODE]
    transpose = next((n for n in model.graph.node if n.output[0] == head.input[1] and n.op_type == "Transpose"), None)
    if transpose is None or transpose.input[0] != EMBEDDING:
        return False
    embedding = next(t for t in model.graph.initializer if t.name == EMBEDDING)
    model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(embedding).T.copy(), LM_HEAD))
    head.input[1] = LM_HEAD
    model.graph.node.remove(transpose)
    return True


def _share_int4_embedding(model, head_name: str, block_size: int) -> None:
    """Replace the embedding's Gather by a GatherBlockQuantized over the LM head's MatMulNBits blocks.

    MatMulNBits stores B as [vocab, blocks, block bytes], one row per token: reshaped to
    [vocab, hidden / 2] it is the embedding table quantized along the hidden axis.
    """
    from onnx import helper

    from .fused import MS_DOMAIN

    head = next(n for n in model.graph.node if n.name == head_name)
    weights, scales = head.input[1], head.input[2]
    shape = _constant(model, "embed_tokens/shape", np.array([0, -1], dtype=np.int64))

    def nodes(ids: str, output: str) -> list:
        return [
            helper.make_node("Reshape", [weights, shape], ["embed_tokens/blocks"], name="embed_tokens/Reshape"),
            helper.make_node("GatherBlockQuantized", ["embed_tokens/blocks", ids, scales], [output],
                             name="embed_tokens/GatherBlockQuantized", domain=MS_DOMAIN, bits=4,
                             block_size=block_size, gather_axis=0, quantize_axis=1),
        ]  # fmt: skip

    _replace_embedding(model, nodes)


def _share_int8_embedding(model, head_name: str) -> None:
    """Replace the embedding's Gather by a Gather of the LM head's int8 table, transposed, dequantized.

    Per-tensor: one scale and zero point; per-channel: each token's own (its column of the head).
    """
    from onnx import TensorProto, helper

    head = next(n for n in model.graph.node if n.name == head_name)
    weights = head.input[1]
    base = weights.removesuffix("_quantized")  # quantize_dynamic's names: W_quantized, W_scale, W_zero_point
    scale, zero_point = f"{base}_scale", f"{base}_zero_point"
    per_channel = len(next(t for t in model.graph.initializer if t.name == scale).dims) == 1

    def nodes(ids: str, output: str) -> list:
        make = helper.make_node
        table = [make("Transpose", [weights], ["embed_tokens/table"], name="embed_tokens/Transpose", perm=[1, 0]),
                 make("Gather", ["embed_tokens/table", ids], ["embed_tokens/rows"], name="embed_tokens/Gather")]  # fmt: skip
        if not per_channel:
            return table + [make("DequantizeLinear", ["embed_tokens/rows", scale, zero_point], [output],
                                 name="embed_tokens/DequantizeLinear")]  # fmt: skip
        # symmetric int8 weights: zero points are 0, so each row is its scale times its values
        axis = _constant(model, "embed_tokens/last_axis", np.array([-1], dtype=np.int64))
        return table + [
            make("Cast", ["embed_tokens/rows"], ["embed_tokens/rows_f"], name="embed_tokens/Cast", to=TensorProto.FLOAT),
            make("Gather", [scale, ids], ["embed_tokens/row_scales"], name="embed_tokens/GatherScales"),
            make("Unsqueeze", ["embed_tokens/row_scales", axis], ["embed_tokens/row_scales_3d"], name="embed_tokens/Unsqueeze"),
            make("Mul", ["embed_tokens/rows_f", "embed_tokens/row_scales_3d"], [output], name="embed_tokens/Mul"),
        ]  # fmt: skip

    _replace_embedding(model, nodes)


def _constant(model, name: str, value: np.ndarray) -> str:
    from onnx import numpy_helper

    model.graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def _replace_embedding(model, make_nodes) -> None:
    """Swap the embedding's Gather for `make_nodes(ids, output)` in place, and drop the fp32 table."""
    from .fused import EMBEDDING, EMBEDDING_NODE

    graph = model.graph
    gather = next(n for n in graph.node if n.name == EMBEDDING_NODE)
    index = list(graph.node).index(gather)
    graph.node.remove(gather)
    for offset, node in enumerate(make_nodes(gather.input[1], gather.output[0])):
        graph.node.insert(index + offset, node)
    graph.initializer.remove(next(t for t in graph.initializer if t.name == EMBEDDING))


def _save(model, dst: Path, external_data: bool) -> None:
    import onnx

    if external_data:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{dst.name}.data", size_threshold=1024)  # fmt: skip
    else:
        onnx.save_model(model, str(dst))
def _int8(src, dst: Path, settings: QuantSettings, excluded: tuple[str, ...], external_data: bool,
          extra_options: dict[str, Any] | None = None) -> None:  # fmt: skip
    """`quantize_dynamic` of every MatMul but `excluded` (`src`: a path or a loaded ModelProto)."""
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
        extra_options=extra_options or {},
    )


def _int4(src: Path, dst: Path, settings: QuantSettings, excluded: tuple[str, ...], external_data: bool) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

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
