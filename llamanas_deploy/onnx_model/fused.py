"""The fused ONNX graph of a LLaMA sub-network, emitted directly from its tensors (CPU).

One node per job, with ONNX Runtime's contrib ops (the ops the onnxruntime-genai model builder
emits, here built from our own modules so that every layer keeps its own MLP width):

    Gather (embedding) -> per layer:
        [Skip]SimplifiedLayerNormalization -> MatMul (fused Q|K|V) -> GroupQueryAttention
        (rotary and the KV cache inside) -> MatMul (o_proj) -> SkipSimplifiedLayerNormalization
        -> MatMul (gate|up fused, then Split, for a graph to be quantized; two MatMuls in fp32)
        -> Sigmoid, Mul, Mul (SiLU(gate) * up; ORT fuses the first two into QuickGelu) -> MatMul (down)
    -> SkipSimplifiedLayerNormalization (final norm) -> MatMul (LM head) -> logits

The I/O is the decoder's `DecoderOnnxConfig` (Optimum names). `GroupQueryAttention` takes
`seqlens_k` (valid tokens - 1 per row) and the total length from `attention_mask`, which
therefore must be contiguous from the left, as in greedy decoding (no left padding);
`position_ids` feed its rotary embedding. With the cache not shared, `present` has
past + new tokens, as the contract says; a caller that passes a preallocated past buffer of
the full context (onnxruntime-genai with `past_present_share_buffer`) gets it updated in place.

Tied embeddings are stored once: the LM head multiplies by the transposed embedding (ORT folds
the `Transpose` when the session opens); quantized, the embedding reads the LM head's blocks.
`export_fused` streams every weight into `model.onnx.data` as it is made (quantized as it is made,
when asked), so that building a graph never holds a second copy of the model. Everything here is
deterministic: fixed names, no randomness, weights in the order of the layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from .config import ONNX_NAME, PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE, DecoderOnnxConfig
from .quantize import QuantSettings, quantize_blocks

MS_DOMAIN = "com.microsoft"
EMBEDDING = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
LM_HEAD_NODE = "lm_head/MatMul"
EMBEDDING_NODE = "embed_tokens/Gather"
EXTERNAL_MIN_BYTES = 1024  # smaller initializers (constants, shapes) stay inside model.onnx
ALIGNMENT = 4096  # external weights start on a page, so that a reader may map them


class _Graph:
    """Nodes and initializers in the order they are added (so the file is the same every time),
    written straight into the model's graph: the weights are held once, not once per helper that
    would copy them (`make_graph`, `make_model`).

    `data`: a binary file every weight of `EXTERNAL_MIN_BYTES` or more is written to as it is made
    (the ONNX external-data layout, offsets aligned to `ALIGNMENT`), so that the graph never holds
    the weights at all. `quant`: MatMul weights become `MatMulNBits` blocks as they are made.
    """

    def __init__(self, quant: QuantSettings | None = None, data: BinaryIO | None = None, data_name: str = "") -> None:
        from onnx import ModelProto

        self.model = ModelProto()
        self.graph = self.model.graph
        self.quant, self.data, self.data_name = quant, data, data_name

    def weight(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        array = np.ascontiguousarray(array)
        if self.data is None or array.nbytes < EXTERNAL_MIN_BYTES:
            self.graph.initializer.add().CopyFrom(numpy_helper.from_array(array, name))
        else:
            self._write_external(name, array)
        return name

    def _write_external(self, name: str, array: np.ndarray) -> None:
        from onnx import TensorProto, helper

        self.data.write(bytes(-self.data.tell() % ALIGNMENT))
        offset = self.data.tell()
        self.data.write(memoryview(array).cast("B"))
        tensor = self.graph.initializer.add()
        tensor.name, tensor.data_type = name, helper.np_dtype_to_tensor_dtype(array.dtype)
        tensor.dims.extend(array.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.data_name), ("offset", offset), ("length", array.nbytes)):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)

    def node(self, op: str, inputs: list[str], name: str, outputs: int | list[str] = 1, domain: str = "", **attrs) -> list[str]:
        from onnx import helper

        names = outputs if isinstance(outputs, list) else [f"{name}/output_{i}" for i in range(outputs)]
        self.graph.node.append(helper.make_node(op, inputs, names, name=name, domain=domain, **attrs))
        return names

    def blocks(self, name: str, weight_t: np.ndarray) -> tuple[str, str]:
        """The quantized blocks and scales of the [in, out] weight `name`, as `MatMulNBitsQuantizer` names them."""
        blocks, scales = quantize_blocks(weight_t, self.quant)
        return self.weight(f"{name}_Q{self.quant.bits}", blocks), self.weight(f"{name}_scales", scales)

    def matmul(self, x: str, weight: str | tuple[str, str], shape: tuple[int, int], name: str,
               outputs: list[str] | None = None) -> str:  # fmt: skip
        """x @ W: a MatMul over the [in, out] initializer `weight`, or a MatMulNBits over its
        (blocks, scales) when `weight` is a pair (named as ORT's quantizer names it, same output)."""
        outputs = outputs if isinstance(outputs, list) else [f"{name}/output_0"]
        if isinstance(weight, str):
            return self.node("MatMul", [x, weight], name, outputs)[0]
        q = self.quant
        level = {"accuracy_level": q.accuracy_level} if q.accuracy_level else {}  # as ORT's quantizer: 0 is left unset
        return self.node("MatMulNBits", [x, *weight], f"{name}_Q{q.bits}", outputs, MS_DOMAIN, K=shape[0], N=shape[1],
                         bits=q.bits, block_size=q.block_size, **level)[0]  # fmt: skip


def _np(tensor) -> np.ndarray:
    return tensor.detach().to("cpu").float().numpy()


def rotary_caches(model, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos / sin tables [positions, head_dim / 2], computed as the torch model computes them (fp32)."""
    import torch

    rotary = model.model.rotary_emb
    inv_freq = rotary.inv_freq.detach().float().cpu()
    positions = torch.arange(max_positions, dtype=torch.float32)
    freqs = positions[:, None] @ inv_freq[None, :]
    scaling = float(getattr(rotary, "attention_scaling", 1.0))
    return (freqs.cos() * scaling).numpy(), (freqs.sin() * scaling).numpy()


def build_fused(model, config: DecoderOnnxConfig, fuse_gate_up: bool = True, quant: QuantSettings | None = None,
                data: BinaryIO | None = None, data_name: str = ""):  # fmt: skip
    """The fused `onnx.ModelProto` of the torch sub-network `model` (a `LlamaForCausalLM`).

    `fuse_gate_up`: one MatMul for gate and up (for a graph to be quantized; see `_mlp`). `quant`:
    every MatMul a `MatMulNBits`, quantized from the torch weights as the graph is built, and the
    embedding read from blocks (`embedding_plan`). `data`, `data_name`: the weights go to this open
    file as they are made, and the graph refers to it by that name (`_Graph`).
    """
    from onnx import TensorProto

    hf = model.config
    g = _Graph(quant, data, data_name)
    eps = float(hf.rms_norm_eps)
    max_positions = int(getattr(hf, "max_position_embeddings", 2048))

    # attention bookkeeping shared by every layer: valid length - 1 per row, and the total length
    one = g.weight("const/one", np.array([1], dtype=np.int64))
    valid = g.node("ReduceSum", ["attention_mask", one], "mask/ReduceSum", keepdims=0)[0]
    last = g.node("Sub", [valid, one], "mask/Sub")[0]
    seqlens_k = g.node("Cast", [last], "mask/seqlens_k", to=TensorProto.INT32)[0]
    mask_shape = g.node("Shape", ["attention_mask"], "mask/Shape")[0]
    total = g.node("Gather", [mask_shape, g.weight("const/axis1", np.array(1, dtype=np.int64))], "mask/Gather", axis=0)[0]
    total_len = g.node("Cast", [total], "mask/total_sequence_length", to=TensorProto.INT32)[0]
    cos, sin = rotary_caches(model, max_positions)
    cos_cache, sin_cache = g.weight("cos_cache", cos), g.weight("sin_cache", sin)

    hidden, head = _embedding(g, model)
    residual, pending = hidden, None  # `pending`: the output still to add to the residual stream
    for i, layer in enumerate(model.model.layers):
        p = f"layers.{i}"
        norm_w = g.weight(f"model.{p}.input_layernorm.weight", _np(layer.input_layernorm.weight))
        if pending is None:
            normed = g.node("SimplifiedLayerNormalization", [residual, norm_w], f"{p}/input_layernorm",
                            axis=-1, epsilon=eps, stash_type=1)[0]  # fmt: skip
        else:
            normed, residual = _skip_norm(g, residual, pending, norm_w, f"{p}/input_layernorm", eps)
        attn = layer.self_attn
        qkv_w = np.concatenate([_np(attn.q_proj.weight), _np(attn.k_proj.weight), _np(attn.v_proj.weight)]).T
        qkv = _linear(g, normed, qkv_w, _bias(attn.q_proj, attn.k_proj, attn.v_proj), f"{p}/attn/qkv_proj")
        out, _, _ = g.node(
            "GroupQueryAttention",
            [qkv, "", "", PAST_KEY % i, PAST_VALUE % i, seqlens_k, total_len, cos_cache, sin_cache, "position_ids"],
            f"{p}/attn/GroupQueryAttention",
            outputs=[f"{p}/attn/output", PRESENT_KEY % i, PRESENT_VALUE % i],
            domain=MS_DOMAIN,
            num_heads=config.num_attention_heads,
            kv_num_heads=config.num_kv_heads,
            scale=float(config.head_dim**-0.5),
            do_rotary=1,
            rotary_interleaved=0,
            local_window_size=-1,
        )
        attn_out = _linear(g, out, _np(attn.o_proj.weight).T, _bias(attn.o_proj), f"{p}/attn/o_proj")
        post_w = g.weight(f"model.{p}.post_attention_layernorm.weight", _np(layer.post_attention_layernorm.weight))
        normed, residual = _skip_norm(g, residual, attn_out, post_w, f"{p}/post_attention_layernorm", eps)
        pending = _mlp(g, normed, layer.mlp, p, fuse_gate_up)

    final_w = g.weight("model.norm.weight", _np(model.model.norm.weight))
    normed, _ = _skip_norm(g, residual, pending, final_w, "norm", eps)
    g.matmul(normed, head, (int(hf.hidden_size), config.vocab_size), LM_HEAD_NODE, outputs=["logits"])
    return _model(g, config)


def embedding_plan(model, quant: QuantSettings | None) -> str:
    """How the embedding table is stored: "fp32" (a Gather), "shared" (tied: a GatherBlockQuantized
    over the LM head's MatMulNBits blocks, one copy in the file) or "own" (untied: over blocks of its own).

    MatMulNBits stores a [hidden, vocab] weight as [vocab, blocks, block bytes], one row per token:
    reshaped to [vocab, hidden * bits / 8] it is the table quantized along the hidden axis, what
    GatherBlockQuantized reads (symmetric: no zero points, the op's default middle value), when
    the hidden size is a whole number of blocks.
    """
    if quant is None or model.config.hidden_size % quant.block_size:
        return "fp32"
    return "shared" if _tied(model) else "own"


def quantization_note(model, quant: QuantSettings) -> str:
    """What `build_fused` does with the LM head and the embedding at `quant` (for the manifest)."""
    what = quant.precision
    embedding = {
        "shared": f"reads the LM head's {what} blocks (tied, stored once)",
        "own": f"{what} blocks of its own (not tied)",
        "fp32": f"fp32 (hidden size {model.config.hidden_size} is not a multiple of the block size)",
    }[embedding_plan(model, quant)]
    return f"LM head {what}; embedding {embedding}"


def _embedding(g: _Graph, model) -> tuple[str, str | tuple[str, str]]:
    """Emit the lookup of `input_ids`; returns its output and the LM head's weight for `_Graph.matmul`."""
    table = _np(model.model.embed_tokens.weight)
    plan = embedding_plan(model, g.quant)
    if plan == "fp32":
        embedding = g.weight(EMBEDDING, table)
        hidden = g.node("Gather", [embedding, "input_ids"], EMBEDDING_NODE)[0]
        if g.quant is None and _tied(model):  # the head multiplies by the transposed table (folded by ORT)
            return hidden, g.node("Transpose", [embedding], "lm_head/Transpose", perm=[1, 0])[0]
        return hidden, _head_weight(g, model)
    blocks, scales = g.blocks(LM_HEAD if plan == "shared" else EMBEDDING, table.T)
    shape = g.weight("embed_tokens/shape", np.array([0, -1], dtype=np.int64))
    rows = g.node("Reshape", [blocks, shape], "embed_tokens/Reshape", outputs=["embed_tokens/blocks"])[0]
    hidden = g.node("GatherBlockQuantized", [rows, "input_ids", scales], "embed_tokens/GatherBlockQuantized",
                    outputs=[f"{EMBEDDING_NODE}/output_0"], domain=MS_DOMAIN, bits=g.quant.bits,
                    block_size=g.quant.block_size, gather_axis=0, quantize_axis=1)[0]  # fmt: skip
    return hidden, (blocks, scales) if plan == "shared" else _head_weight(g, model)


def _head_weight(g: _Graph, model) -> str | tuple[str, str]:
    weight_t = _np(model.lm_head.weight).T
    return g.weight(LM_HEAD, weight_t) if g.quant is None else g.blocks(LM_HEAD, weight_t)


def _tied(model) -> bool:
    return model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def _bias(*linears) -> np.ndarray | None:
    biases = [lin.bias for lin in linears]
    if all(b is None for b in biases):
        return None
    return np.concatenate([_np(b) if b is not None else np.zeros(lin.out_features, np.float32) for b, lin in zip(biases, linears)])


def _linear(g: _Graph, x: str, weight_t: np.ndarray, bias: np.ndarray | None, name: str) -> str:
    """x @ W^T (+ b), the weight stored [in, out] so that a quantizer turns it into MatMulNBits."""
    weight = g.weight(f"{name}.weight", weight_t) if g.quant is None else g.blocks(f"{name}.weight", weight_t)
    y = g.matmul(x, weight, weight_t.shape, f"{name}/MatMul")
    if bias is not None:
        y = g.node("Add", [y, g.weight(f"{name}.bias", bias)], f"{name}/Add")[0]
    return y


def _skip_norm(g: _Graph, residual: str, added: str, weight: str, name: str, eps: float) -> tuple[str, str]:
    """RMSNorm(residual + added) and the new residual (residual + added), in one node."""
    out, _, _, summed = g.node(
        "SkipSimplifiedLayerNormalization", [residual, added, weight], name, outputs=4, domain=MS_DOMAIN, epsilon=eps
    )
    return out, summed


def _mlp(g: _Graph, x: str, mlp, prefix: str, fuse_gate_up: bool) -> str:
    """down(SiLU(gate(x)) * up(x)); the width is this layer's own.

    `fuse_gate_up`: gate and up in one MatMul, then a Split. Measured (benchmarks/export_vs_builder.py,
    ORT's profiler): quantized, one MatMulNBits instead of two saves more
    than the Split's copy costs; in fp32 the Split costs more than the saved MatMul (about 2 %).
    """
    if fuse_gate_up:
        width = mlp.gate_proj.out_features
        gate_up_w = np.concatenate([_np(mlp.gate_proj.weight), _np(mlp.up_proj.weight)]).T
        gate_up = _linear(g, x, gate_up_w, _bias(mlp.gate_proj, mlp.up_proj), f"{prefix}/mlp/gate_up_proj")
        sizes = g.weight(f"{prefix}/mlp/split_sizes", np.array([width, width], dtype=np.int64))
        gate, up = g.node("Split", [gate_up, sizes], f"{prefix}/mlp/Split", outputs=2, axis=-1)
    else:
        gate = _linear(g, x, _np(mlp.gate_proj.weight).T, _bias(mlp.gate_proj), f"{prefix}/mlp/gate_proj")
        up = _linear(g, x, _np(mlp.up_proj.weight).T, _bias(mlp.up_proj), f"{prefix}/mlp/up_proj")
    sigmoid = g.node("Sigmoid", [gate], f"{prefix}/mlp/act_fn/Sigmoid")[0]
    silu = g.node("Mul", [gate, sigmoid], f"{prefix}/mlp/act_fn/Mul")[0]
    product = g.node("Mul", [silu, up], f"{prefix}/mlp/Mul")[0]
    return _linear(g, product, _np(mlp.down_proj.weight).T, _bias(mlp.down_proj), f"{prefix}/mlp/down_proj")


def _model(g: _Graph, config: DecoderOnnxConfig):
    from onnx import TensorProto, helper

    def value(name: str, dtype: int, axes: dict[int, str], rank: int, fixed: dict[int, int]) -> Any:
        dims = [axes.get(a, fixed.get(a)) for a in range(rank)]
        return helper.make_tensor_value_info(name, dtype, dims)

    kv_fixed = {1: config.num_kv_heads, 3: config.head_dim}
    inputs = []
    for name, axes in config.inputs.items():
        if name.startswith("past_key_values."):
            inputs.append(value(name, TensorProto.FLOAT, axes, 4, kv_fixed))
        else:
            inputs.append(value(name, TensorProto.INT64, axes, 2, {}))
    outputs = []
    for name, axes in config.outputs.items():
        if name == "logits":
            outputs.append(value(name, TensorProto.FLOAT, axes, 3, {2: config.vocab_size}))
        else:
            outputs.append(value(name, TensorProto.FLOAT, axes, 4, kv_fixed))
    g.graph.name = "llamanas_decoder"
    g.graph.input.extend(inputs)
    g.graph.output.extend(outputs)
    model = g.model
    model.ir_version = 10
    model.opset_import.extend([helper.make_opsetid("", config.opset), helper.make_opsetid(MS_DOMAIN, 1)])
    model.producer_name = "llamanas-deploy"
    return model


def export_fused(model, config: DecoderOnnxConfig, out_dir: Path, fuse_gate_up: bool = True,
                 quant: QuantSettings | None = None) -> Path:  # fmt: skip
    """Write `out_dir/model.onnx`, its weights streamed into `out_dir/model.onnx.data` as they are
    made (`quant`: quantized as they are made); returns the model's path."""
    import onnx


    data_name = f"{ONNX_NAME}.data"
    with open(out_dir / data_name, "wb") as data:
        proto = build_fused(model, config, fuse_gate_up, quant, data, data_name)
    path = out_dir / ONNX_NAME
    onnx.save_model(proto, str(path))
    return path
