"""Import a GGUF LLaMA checkpoint (llama.cpp's file format) as a Hugging Face checkpoint directory.

`import_gguf(file, out)` reads the file with ggml's own `gguf` package and writes what the
project's loader and transformers read: `config.json` (from the `llama.*` metadata; a per-layer
`feed_forward_length` becomes `intermediate_sizes`), `model.safetensors` in float32, and the
tokenizer the file describes (`tokenizer.json` + `tokenizer_config.json`, chat template kept).

Weights are dequantized one tensor at a time and streamed into the safetensors file, so memory
holds one tensor, never the model twice. llama.cpp's converter permutes the rows of the query
and key projections for its rotary layout; that permutation is undone here, as transformers'
own GGUF loader does. The tokenizer is the one transformers builds from the same file, so both
tokenize alike. `config.json` records the source under `llamanas_import` (file name, sha256,
tensor types).
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..concepts import GGUF_ARCHITECTURES
from ..errors import BadInputError
from ..jsonfiles import check_out_dir, new_directory, read_json, sha256_file, write_json
from ..progress import Callback, report
from .build import WEIGHTS_NAME, layer_widths
from .families import ModelShape

TOKENIZER_MODELS = ("gpt2", "llama")  # byte-level BPE with merges; SentencePiece
LAYER_TENSORS = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
SPECIAL_TOKEN_IDS = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id", "pad_token_id": "padding_token_id"}
REQUIRED = object()  # `_field`'s default: the key must be there


def import_gguf(gguf_path: str | Path, out_dir: str | Path, callback: Callback = None) -> Path:
    """Write the LLaMA checkpoint in `gguf_path` as a new Hugging Face directory `out_dir`.

    `out_dir` must not exist or be empty; it appears complete or not at all. `BadInputError`
    (one line naming the file) for a missing or malformed file, another architecture, a tensor
    type the `gguf` package cannot dequantize, or tensors that do not fit the metadata.
    """
    path = Path(gguf_path)
    check_out_dir(Path(out_dir))
    reader = _open(path)
    config = _hf_config(reader, path)
    tensors = _plan(reader, config, path)
    tokenizer_model = _tokenizer_model(reader, path)
    types = dict(sorted(Counter(_type_name(t) for t in tensors).items()))
    report(callback, "import", message=f"importing {path.name}: {config['num_hidden_layers']} layers, "
                                       f"hidden {config['hidden_size']}, tensors {types}")  # fmt: skip
    config["llamanas_import"] = {"source": path.name, "sha256": sha256_file(path), "format": "gguf", "tensor_types": types}
    with new_directory(out_dir) as tmp:
        _write_tokenizer(path, tokenizer_model, tmp, config, _adds_bos(reader, path, tokenizer_model))
        _write_weights(tensors, config, tmp / WEIGHTS_NAME, callback)
        write_json(tmp / "config.json", config, sort_keys=True)
    return Path(out_dir)


def summarize(model_dir: str | Path) -> dict[str, Any]:
    """What an imported directory holds: shape, parameters, tensor types, source and its sha256."""
    from safetensors import safe_open

    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    config = read_json(config_path, "model config")
    with safe_open(str(model_dir / WEIGHTS_NAME), framework="numpy") as weights:
        params = sum(int(np.prod(weights.get_slice(k).get_shape())) for k in weights.keys())
    source = config["llamanas_import"]
    return {
        "out": str(model_dir),
        "source": source["source"],
        "sha256": source["sha256"],
        "tensor_types": source["tensor_types"],
        "num_hidden_layers": config["num_hidden_layers"],
        "hidden_size": config["hidden_size"],
        "intermediate_sizes": layer_widths(config, str(config_path)),
        "num_attention_heads": config["num_attention_heads"],
        "num_key_value_heads": config["num_key_value_heads"],
        "vocab_size": config["vocab_size"],
        "tie_word_embeddings": config["tie_word_embeddings"],
        "params": params,
    }


# ---- reading -------------------------------------------------------------------------------------


def _open(path: Path):
    from gguf import GGUFReader

    if not path.is_file():
        raise BadInputError(f"{path}: no such GGUF file")
    try:
        return GGUFReader(path)
    except Exception as err:  # noqa: BLE001 - the reader raises ValueError, struct and numpy errors alike
        raise BadInputError(f"{path}: not a readable GGUF file ({_first_line(err)})") from None


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _field(reader, key: str, path: Path, default: Any = REQUIRED) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is REQUIRED:
            raise BadInputError(f"{path}: GGUF metadata has no {key}")
        return default
    return field.contents()


def _count(reader, key: str, path: Path, default: Any = REQUIRED) -> int:
    value = _field(reader, key, path, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInputError(f"{path}: GGUF metadata {key} must be a positive integer, got {value!r}")
    return value


def _real(reader, key: str, path: Path, default: Any = REQUIRED) -> float:
    value = _field(reader, key, path, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise BadInputError(f"{path}: GGUF metadata {key} must be a positive number, got {value!r}")
    return float(value)


def _hf_config(reader, path: Path) -> dict[str, Any]:
    """The transformers `config.json` of the LLaMA checkpoint a GGUF reader describes (no weights read)."""
    arch = _field(reader, "general.architecture", path)
    if arch not in GGUF_ARCHITECTURES:  # deci: llama's keys and tensors, one MLP width per layer
        raise BadInputError(f"{path}: architecture '{arch}' is not supported (only {' or '.join(GGUF_ARCHITECTURES)} "
                            "GGUF files)")  # fmt: skip
    key = f"{arch}."
    layers = _count(reader, key + "block_count", path)
    hidden = _count(reader, key + "embedding_length", path)
    heads = _count(reader, key + "attention.head_count", path)
    embedding = _tensor(reader, "token_embd.weight", path)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "num_key_value_heads": _count(reader, key + "attention.head_count_kv", path, heads),
        "max_position_embeddings": _count(reader, key + "context_length", path),
        "rms_norm_eps": _real(reader, key + "attention.layer_norm_rms_epsilon", path),
        "rope_theta": _real(reader, key + "rope.freq_base", path, 10000.0),  # llama.cpp's default
        "vocab_size": int(embedding.shape[1]),  # GGUF lists dimensions innermost first
        "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
        "torch_dtype": "float32",
    }
    config.update(_mlp_widths(reader, key + "feed_forward_length", layers, path))
    head_dim = _head_dim(reader, key, path, hidden // heads)
    if head_dim != hidden // heads:
        config["head_dim"] = head_dim
    _check_rope_scaling(reader, key, path)
    for name, gguf_name in SPECIAL_TOKEN_IDS.items():
        token_id = _field(reader, f"tokenizer.ggml.{gguf_name}", path, None)
        if token_id is not None:
            config[name] = token_id
    return config


def _mlp_widths(reader, key: str, layers: int, path: Path) -> dict[str, Any]:
    widths = _field(reader, key, path)
    if not isinstance(widths, list):
        return {"intermediate_size": _count(reader, key, path)}
    if len(widths) != layers or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
        raise BadInputError(f"{path}: GGUF metadata {key} must be one positive integer or {layers} "
                            f"(one per layer), got {widths!r}")  # fmt: skip
    return {"intermediate_size": max(widths), "intermediate_sizes": widths}


def _head_dim(reader, key: str, path: Path, default: int) -> int:
    """Attention head width: `attention.key_length`, else the rotary width, else hidden / heads."""
    for name in ("attention.key_length", "rope.dimension_count"):
        if key + name in reader.fields:
            return _count(reader, key + name, path)
    return default


def _check_rope_scaling(reader, key: str, path: Path) -> None:
    scaling = _field(reader, key + "rope.scaling.type", path, "none")
    if scaling != "none":
        raise BadInputError(f"{path}: rope scaling '{scaling}' is not supported (plain rotary embeddings only)")


def _tensor(reader, name: str, path: Path):
    for tensor in reader.tensors:
        if tensor.name == name:
            return tensor
    raise BadInputError(f"{path}: no tensor {name}")


def _type_name(tensor) -> str:
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType(tensor.tensor_type).name


# ---- weights -------------------------------------------------------------------------------------


def _hf_name(gguf_name: str) -> str | None:
    stem, _, suffix = gguf_name.rpartition(".")
    if suffix != "weight":
        return None
    if stem in GLOBAL_TENSORS:
        return f"{GLOBAL_TENSORS[stem]}.weight"
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in LAYER_TENSORS:
        return f"model.layers.{int(parts[1])}.{LAYER_TENSORS[parts[2]]}.weight"
    return None


def _expected_shapes(config: dict[str, Any], source: str) -> dict[str, tuple[int, ...]]:
    """{HF tensor name: shape} of the checkpoint `config` describes (no `lm_head` when tied)."""
    shape = ModelShape.from_config_dict(config, source)  # refuses heads that do not divide into KV heads
    hidden, vocab = shape.hidden_size, shape.vocab_size
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not shape.tie_word_embeddings:
        shapes["lm_head.weight"] = (vocab, hidden)
    for i, width in enumerate(layer_widths(config, source)):
        layer = {
            "input_layernorm": (hidden,), "post_attention_layernorm": (hidden,),
            "self_attn.q_proj": (shape.q_dim, hidden), "self_attn.k_proj": (shape.kv_dim, hidden),
            "self_attn.v_proj": (shape.kv_dim, hidden), "self_attn.o_proj": (hidden, shape.q_dim),
            "mlp.gate_proj": (width, hidden), "mlp.up_proj": (width, hidden), "mlp.down_proj": (hidden, width),
        }  # fmt: skip
        shapes.update({f"model.layers.{i}.{name}.weight": size for name, size in layer.items()})
    return shapes


def _plan(reader, config: dict[str, Any], path: Path) -> list:
    """The file's tensors, checked: each has a place and the right shape, its type can be dequantized."""
    expected = _expected_shapes(config, str(path))
    for tensor in reader.tensors:
        hf_name = _hf_name(tensor.name)
        if hf_name not in expected:
            raise BadInputError(f"{path}: tensor {tensor.name} ({_type_name(tensor)}) has no place in a LLaMA "
                                "checkpoint")  # fmt: skip
        shape, implied = _torch_shape(tensor), expected.pop(hf_name)
        if shape != implied:
            raise BadInputError(f"{path}: tensor {tensor.name} has shape {shape}, the metadata implies {implied}")
        _check_type(tensor, path)
    if expected:
        raise BadInputError(f"{path}: missing tensors for {sorted(expected)[:3]}")
    return list(reader.tensors)


def _torch_shape(tensor) -> tuple[int, ...]:
    return tuple(int(n) for n in reversed(tensor.shape))


def _check_type(tensor, path: Path) -> None:
    """Dequantize one row: the `gguf` package raises for a type it cannot read."""
    from gguf import dequantize

    try:
        dequantize(tensor.data[:1], tensor.tensor_type)
    except (NotImplementedError, ValueError) as err:
        raise BadInputError(f"{path}: tensor {tensor.name} has type {_type_name(tensor)}, which cannot be "
                            f"dequantized ({_first_line(err)})") from None  # fmt: skip


def _float32(tensor, config: dict[str, Any]) -> np.ndarray:
    """The tensor in float32, HF layout: dequantized, shaped, query/key rows back in HF's rotary order."""
    from gguf import dequantize

    values = dequantize(tensor.data, tensor.tensor_type).reshape(_torch_shape(tensor))
    heads = {"attn_q": config["num_attention_heads"], "attn_k": config["num_key_value_heads"]}
    kind = tensor.name.split(".")[-2]
    if kind in heads:
        values = _unpermute(values, heads[kind])
    return np.ascontiguousarray(values, dtype=np.float32)


def _unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp stores each head's rows as interleaved pairs; HF keeps the two rotary halves apart."""
    rows = weight.shape[0]
    return weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def _write_weights(tensors: list, config: dict[str, Any], target: Path, callback: Callback) -> None:
    """Stream the tensors into a safetensors file: the header first (shapes are known), then each tensor's bytes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for tensor in tensors:
        shape = _torch_shape(tensor)
        size = 4 * int(np.prod(shape))
        header[_hf_name(tensor.name)] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(target, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for done, tensor in enumerate(tensors, 1):
            f.write(_float32(tensor, config).data)
            report(callback, "import", done, len(tensors), "tensor", status=tensor.name)


# ---- tokenizer -----------------------------------------------------------------------------------


def _tokenizer_model(reader, path: Path) -> str:
    model = _field(reader, "tokenizer.ggml.model", path, None)
    if model not in TOKENIZER_MODELS:
        raise BadInputError(f"{path}: tokenizer.ggml.model {model!r} is not supported "
                            f"(supported: {list(TOKENIZER_MODELS)})")  # fmt: skip
    return model


def _adds_bos(reader, path: Path, model: str) -> bool:
    """Whether the file's tokenizer starts every text with BOS: its own flag, else llama.cpp's default for
    the vocabulary type (SentencePiece: yes; byte-level BPE: no). transformers' GGUF reader ignores the
    flag in some 5.x releases, so the file decides."""
    return bool(_field(reader, "tokenizer.ggml.add_bos_token", path, model == "llama"))


def _write_tokenizer(path: Path, model: str, out: Path, config: dict[str, Any], add_bos: bool) -> None:
    """`tokenizer.json` + `tokenizer_config.json`: the tokenizer transformers builds from the GGUF's vocabulary."""
    tokenizer = _gguf_tokenizer(path, model, out.parent / "source")
    backend = tokenizer.backend_tokenizer
    if add_bos and tokenizer.bos_token is not None:  # in tokenizer.json itself, so every reader adds it
        from tokenizers.processors import TemplateProcessing

        bos = str(tokenizer.bos_token)
        backend.post_processor = TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                    special_tokens=[(bos, tokenizer.bos_token_id)])  # fmt: skip
    backend.save(str(out / "tokenizer.json"))
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": config["max_position_embeddings"],
        "add_bos_token": add_bos,
        "add_eos_token": bool(getattr(tokenizer, "add_eos_token", False)),
        "clean_up_tokenization_spaces": bool(tokenizer.clean_up_tokenization_spaces),
    }
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        if getattr(tokenizer, name) is not None:
            settings[name] = str(getattr(tokenizer, name))
    if tokenizer.chat_template:
        settings["chat_template"] = tokenizer.chat_template
    write_json(out / "tokenizer_config.json", settings, sort_keys=True)


def _gguf_tokenizer(path: Path, model: str, scratch: Path):
    """transformers' tokenizer for the file, read through a link in a folder of its own (so that no
    other file beside the GGUF, such as a stray `tokenizer_config.json`, takes part).

    The class `AutoTokenizer` picks for a GGUF, called directly: `AutoTokenizer` would also build a
    transformers config from the metadata, which fails on per-layer MLP widths.
    """
    from transformers import PreTrainedTokenizerFast

    scratch.mkdir()
    (scratch / path.name).symlink_to(path.resolve())
    try:
        return PreTrainedTokenizerFast.from_pretrained(str(scratch), gguf_file=path.name, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - ValueError, KeyError...: transformers has no one error for this
        raise BadInputError(f"{path}: cannot build its '{model}' tokenizer ({_first_line(err)})") from None
