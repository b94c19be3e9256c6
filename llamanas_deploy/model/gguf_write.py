"""A sub-network as a GGUF file, the format llama.cpp runs: written with ggml's own `gguf` package.

`write_gguf` writes the file with ggml's own `gguf` package: the names, the query/key row
permutation and the metadata keys that llama.cpp's converter writes (the inverse of what
`model.gguf_import` reads). Uniform MLP widths make a `llama` file, `feed_forward_length` a
scalar. Per-layer widths make a `deci` file (llama.cpp's DeciLM / Nemotron-NAS architecture: the
llama graph, same tensors and rotary layout, with per-layer shapes), `feed_forward_length` an
array of one value per layer: llama.cpp's `llama` loader reads such an array but builds every
layer at the first layer's width, and refuses the file. Tied embeddings are `token_embd` alone
(llama.cpp reads the output matrix from it when `output` is absent).

Tensor types, as llama.cpp's converter and `llama-quantize` choose them: 1-D tensors (the norms)
stay F32; every matrix takes the precision's type (F16, Q8_0 or Q4_0), except that a q4_0 file
keeps its output matrix (the embedding when tied) at Q8_0 (`llama-quantize` keeps it at Q6_K,
which the `gguf` package cannot write; Q8_0 is what it falls back to for rows Q6_K cannot block),
and a matrix whose rows are not a whole number of blocks (32 values) falls back to F16, as the
converter does. The `gguf` package cannot write K-quants: q4_k_m is written at F32 beside the target,
then quantized by llama.cpp's own quantizer (`llama_model_quantize`, as `llama-quantize` does), which
picks every tensor's type itself (Q4_K and Q6_K; a matrix whose rows are not whole blocks of 256
falls back to Q5_0 or Q8_0), so the types the manifest lists are read back from the file.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from ..concepts import GGUF_ARCHITECTURES, GGUF_PRECISIONS, check_choice, max_threads
from ..errors import BadInputError
from ..jsonfiles import read_json
from ..subnet_config import SubnetConfig

if TYPE_CHECKING:
    from .supernet import SuperNetwork

GGUF_NAME = "model.gguf"
UNIFORM_ARCHITECTURE, PER_LAYER_ARCHITECTURE = GGUF_ARCHITECTURES
# what the `gguf` package writes: GGMLQuantizationType names (f32: only as the input of llama.cpp's quantizer)
MATRIX_TYPES = {"f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0", "f32": "F32"}
OUTPUT_TYPES = {"q4_0": "Q8_0"}  # the output matrix, where it differs (module docstring)
FALLBACK_TYPE = "F16"
FILE_TYPES = {"f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0", "f32": "ALL_F32"}  # LlamaFileType
LLAMA_QUANTIZED = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}  # precisions llama.cpp's quantizer makes: its ftype name
QUANTIZER_INPUT = "f32"  # what it quantizes: the weights unrounded, as the converter's --outtype f32 gives them
LLAMA_LOG_ERROR = 4  # ggml_log_level GGML_LOG_LEVEL_ERROR (llama_cpp._logger still maps the older numbering)
# llama.cpp's pre-tokenizer for each tokenizer.json pre-tokenizer it matches: the GPT-2 split, and
# the same after each digit is split off (llama.cpp's "smollm", as SmolLM2's own tokenizer.json has it)
PRE_TOKENIZERS = {("byte_level",): "gpt-2", ("digits", "byte_level"): "smollm"}
LLAMA_CPP_EXTRA = "pip install 'llamanas-deploy[llamacpp]'"


def require_llama_cpp() -> None:
    """`BadInputError` naming the extra to install when llama-cpp-python is missing."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise BadInputError(f"llama-cpp-python is not installed; install the llamacpp extra: {LLAMA_CPP_EXTRA}")


def write_gguf(supernet: SuperNetwork, subnet: SubnetConfig, path: str | Path, precision: str) -> dict[str, Any]:
    """Write `subnet` of `supernet` as the GGUF file `path` at `precision` (`GGUF_PRECISIONS`), from
    views of the super-network's weights; see `write_model_gguf`."""
    return write_model_gguf(supernet.extract(subnet, copy=False), subnet, supernet.source, path, precision)


def write_model_gguf(model, subnet: SubnetConfig, model_dir: Path, path: str | Path, precision: str) -> dict[str, Any]:
    """Write `model` (the built sub-network `subnet`; its tokenizer in `model_dir`) as the GGUF file `path`.

    Returns what the manifest says of the file: its name, architecture, `feed_forward_length`, the
    tensor types and the matrices that fell back to F16 (both as read back from the file), and the
    tokenizer. `BadInputError` for a model llama.cpp's llama architecture cannot hold (biases, rope
    scaling), a tokenizer it cannot reproduce, or a file llama.cpp's quantizer fails on.
    """
    check_choice(precision, GGUF_PRECISIONS, "precision")
    path = Path(path)
    if precision not in LLAMA_QUANTIZED:
        written = _write(model, subnet, model_dir, path, precision)
    else:
        intermediate = path.with_name(f".{path.name}.{QUANTIZER_INPUT}")
        try:
            written = _write(model, subnet, model_dir, intermediate, QUANTIZER_INPUT)
            _llama_quantize(intermediate, path, LLAMA_QUANTIZED[precision])
        finally:
            intermediate.unlink(missing_ok=True)
    return {"file": path.name, **written, **_tensor_types(path, precision)}


def _write(model, subnet: SubnetConfig, model_dir: Path, path: Path, precision: str) -> dict[str, Any]:
    """The file written with the `gguf` package, tensors quantized and written one at a time (the
    header first: every size is known); returns its architecture, widths and tokenizer."""
    from gguf import GGUFWriter

    _check_supported(model.config, str(model_dir))
    tokenizer = tokenizer_metadata(model_dir, model.config.vocab_size)
    plan = list(_plan(model, precision))
    uniform = len(set(subnet.intermediate_sizes)) == 1
    writer = GGUFWriter(path, UNIFORM_ARCHITECTURE if uniform else PER_LAYER_ARCHITECTURE)
    try:
        widths = _add_architecture(writer, model.config, subnet, precision)
        _add_tokenizer(writer, tokenizer, model_dir)
        for name, tensor, qtype in plan:
            writer.add_tensor_info(name, _byte_shape(tensor, qtype), np.dtype(np.uint8), _nbytes(tensor, qtype), qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, tensor, qtype in plan:
            writer.write_tensor_data(_quantized(name, tensor, qtype, model.config))
    finally:
        writer.close()
    return {"architecture": writer.arch, "feed_forward_length": widths,
            "tokenizer": {"model": tokenizer["model"], "pre": tokenizer["pre"]}}  # fmt: skip


def _tensor_types(path: Path, precision: str) -> dict[str, Any]:
    """{type name: count} of the file's tensors, and the matrices at F16 in a file of another precision."""
    from gguf import GGUFReader

    types = {tensor.name: tensor.tensor_type.name for tensor in GGUFReader(path).tensors}
    f16_fallback = [] if precision == "f16" else [name for name, qtype in types.items() if qtype == FALLBACK_TYPE]
    return {"tensor_types": dict(sorted(Counter(types.values()).items())), "f16_fallback": f16_fallback}


def _llama_quantize(source: Path, target: Path, ftype: str) -> None:
    """`source` quantized by llama.cpp's own quantizer to `target` (llama.cpp's file type `ftype`),
    on every core; `BadInputError` with llama.cpp's last error when it fails."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = getattr(llama_cpp, ftype), max_threads()
    with _llama_errors() as errors:
        failed = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if failed:
        detail = errors[-1].strip() if errors else f"return code {failed}"  # the last: what failed, with the cause
        raise BadInputError(f"{target}: llama.cpp's quantizer failed ({detail})")


@contextmanager
def _llama_errors() -> Iterator[list[str]]:
    """llama.cpp's log while inside: its errors kept in the list, the rest (a line per tensor) dropped;
    then llama-cpp-python's own logger again."""
    import llama_cpp
    from llama_cpp._logger import llama_log_callback

    errors: list[str] = []

    @llama_cpp.llama_log_callback
    def keep_errors(level: int, text: bytes, _user_data) -> None:
        if level == LLAMA_LOG_ERROR:
            errors.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(keep_errors, None)
    try:
        yield errors
    finally:
        llama_cpp.llama_log_set(llama_log_callback, None)


def _add_architecture(writer, config, subnet: SubnetConfig, precision: str) -> int | list[int]:
    """The `<architecture>.*` keys llama.cpp reads; returns `feed_forward_length` as written."""
    from gguf import GGML_QUANT_VERSION, LlamaFileType

    heads, head_dim = config.num_attention_heads, config.head_dim
    widths = list(subnet.intermediate_sizes)
    feed_forward = widths[0] if len(set(widths)) == 1 else widths
    writer.add_name(f"llamanas sub-network {subnet.id}")
    writer.add_file_type(LlamaFileType[FILE_TYPES[precision]])
    writer.add_quantization_version(GGML_QUANT_VERSION)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(subnet.num_layers)
    writer.add_feed_forward_length(feed_forward)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(config.rope_parameters["rope_theta"]))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)
    return feed_forward


def _check_supported(config, source: str) -> None:
    rope_type = (config.rope_parameters or {}).get("rope_type", "default")
    if rope_type != "default":
        raise BadInputError(f"{source}: rope type '{rope_type}' cannot be written to GGUF (plain rotary embeddings only)")
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(config, flag, False):
            raise BadInputError(f"{source}: {flag} is set; the GGUF writer handles bias-free LLaMA models only")


def _plan(model, precision: str) -> Iterator[tuple[str, Any, Any]]:
    """(GGUF name, torch tensor, GGML type) of every tensor the file holds, in the model's order."""
    tied = model.config.tie_word_embeddings
    output = "token_embd.weight" if tied else "output.weight"  # the matrix that makes the logits
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp takes the output matrix from token_embd when `output` is absent
        name = _gguf_name(hf_name)
        wanted = OUTPUT_TYPES.get(precision, MATRIX_TYPES[precision]) if name == output else MATRIX_TYPES[precision]
        yield name, tensor, _ggml_type(tensor, wanted)


@functools.cache
def _gguf_names() -> tuple[dict[str, str], dict[str, str]]:
    """{transformers name: llama.cpp name} of the global and the per-layer tensors (the importer's maps, inverted)."""
    from .gguf_import import GLOBAL_TENSORS, LAYER_TENSORS  # imports torch

    return {hf: gguf for gguf, hf in GLOBAL_TENSORS.items()}, {hf: gguf for gguf, hf in LAYER_TENSORS.items()}


def _gguf_name(hf_name: str) -> str:
    """llama.cpp's name of a transformers LLaMA tensor (`model.layers.3.mlp.up_proj.weight` -> `blk.3.ffn_up.weight`)."""
    global_names, layer_names = _gguf_names()
    stem = hf_name.removesuffix(".weight")
    if stem in global_names:
        return f"{global_names[stem]}.weight"
    _, _, index, rest = stem.split(".", 3)
    return f"blk.{index}.{layer_names[rest]}.weight"


def _ggml_type(tensor, wanted: str):
    """F32 for a 1-D tensor; for a matrix `wanted` when its rows are whole blocks of it, else F16."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if tensor.dim() == 1:
        return GGMLQuantizationType.F32
    qtype = GGMLQuantizationType[wanted]
    return qtype if tensor.shape[-1] % GGML_QUANT_SIZES[qtype][0] == 0 else GGMLQuantizationType[FALLBACK_TYPE]


def _byte_shape(tensor, qtype) -> tuple[int, ...]:
    from gguf.quants import quant_shape_to_byte_shape

    return quant_shape_to_byte_shape(tuple(tensor.shape), qtype)


def _nbytes(tensor, qtype) -> int:
    return int(np.prod(_byte_shape(tensor, qtype)))


def _quantized(name: str, tensor, qtype, config) -> np.ndarray:
    """The tensor's bytes in the file: float32, query/key rows in llama.cpp's rotary order, quantized."""
    from gguf.quants import quantize

    values = tensor.detach().float().numpy()
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}.get(name.split(".")[-2])
    if heads is not None:
        values = _permute(values, heads)
    return quantize(np.ascontiguousarray(values), qtype)


def _permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """transformers keeps each head's two rotary halves apart; llama.cpp interleaves them in pairs
    (the inverse of `gguf_import._unpermute`)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


# ---- tokenizer -----------------------------------------------------------------------------------


def tokenizer_metadata(model_dir: Path, vocab_size: int) -> dict[str, Any]:
    """tokenizer.json as llama.cpp's byte-level BPE vocabulary: `model`, `pre`, `tokens` and `types`.

    Ids the file leaves unassigned become unused `[PAD<id>]` tokens, as the converter writes them.
    `BadInputError` for a tokenizer llama.cpp would not tokenize alike (another model type, byte
    fallback, a normalizer, an unknown pre-tokenizer).
    """
    from gguf import TokenType

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise BadInputError(f"{model_dir}: no tokenizer.json; a GGUF file carries its tokenizer")
    spec = read_json(path, "tokenizer")
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback") or spec.get("normalizer") is not None \
            or (spec.get("decoder") or {}).get("type") != "ByteLevel":  # fmt: skip
        raise BadInputError(f"{path}: only byte-level BPE tokenizers (no normalizer, no byte fallback) can be "
                            "written to GGUF")  # fmt: skip
    if not model.get("merges"):
        raise BadInputError(f"{path}: no merges; llama.cpp's BPE vocabulary needs them")
    tokens = {token_id: (token, TokenType.NORMAL) for token, token_id in model["vocab"].items()}
    for added in spec.get("added_tokens", []):
        tokens[added["id"]] = (added["content"], TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED)
    if max(tokens) >= vocab_size:
        raise BadInputError(f"{path}: token id {max(tokens)} does not fit the model's vocab_size {vocab_size}")
    ordered = [tokens.get(i, (f"[PAD{i}]", TokenType.UNUSED)) for i in range(vocab_size)]
    return {"model": "gpt2", "pre": _pre_tokenizer(spec, path), "tokens": [t for t, _ in ordered],
            "types": [int(k) for _, k in ordered]}  # fmt: skip


def _pre_tokenizer(spec: dict[str, Any], path: Path) -> str:
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    signature = tuple(_step(step) for step in steps)
    if signature not in PRE_TOKENIZERS:
        raise BadInputError(f"{path}: pre-tokenizer {json.dumps(pre)[:200]} has no llama.cpp equivalent the GGUF "
                            "writer knows (the GPT-2 byte-level split, optionally after single digits)")  # fmt: skip
    return PRE_TOKENIZERS[signature]


def _step(step: dict[str, Any]) -> str:
    if step.get("type") == "ByteLevel" and step.get("use_regex", True) and not step.get("add_prefix_space"):
        return "byte_level"
    if step.get("type") == "Digits" and step.get("individual_digits"):
        return "digits"
    return str(step.get("type"))


def _add_tokenizer(writer, tokenizer: dict[str, Any], model_dir: Path) -> None:
    """Tokens, their types, merges, special token ids, add_bos/add_eos and the chat template."""
    from gguf import SpecialVocab

    writer.add_tokenizer_model(tokenizer["model"])
    writer.add_tokenizer_pre(tokenizer["pre"])
    writer.add_token_list(tokenizer["tokens"])
    writer.add_token_types(tokenizer["types"])
    # gguf's own reader of tokenizer.json / tokenizer_config.json / config.json, as the converter uses it
    SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokenizer["tokens"])).add_to_gguf(writer, quiet=True)
