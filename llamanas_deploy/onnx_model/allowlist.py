"""What an artifact may ask ONNX Runtime and onnxruntime-genai to do: only what the toolkit writes.

A sha256 sidecar is not a signature (whoever can edit an artifact can re-seal it), so the content
itself must be safe to open. Two things in an artifact reach a runtime beyond the weights:

- `genai_config.json`: onnxruntime-genai reads session options from it, and some of them load
  code (`custom_ops_library`) or write files (profiling, provider caches). The config is checked
  against `GENAI_SCHEMA`, the structure `artifact.genai_config` writes: any other key, any other
  provider or provider option, any value of another type is refused.
- the ONNX graph: ops of a domain the toolkit does not emit need a custom-op library, and an
  initializer's external data names a file to open. Ops must be standard ONNX or one of the
  contrib ops in `CONTRIB_OPS`; every external-data location must be a file the manifest lists.

Both raise `BadInputError` naming the file and the field, before any session opens the artifact.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from ..errors import BadInputError

MS_DOMAIN = "com.microsoft"
STANDARD_DOMAINS = ("", "ai.onnx")
CONTRIB_OPS = frozenset(
    {"GroupQueryAttention", "MatMulNBits", "GatherBlockQuantized", "SkipSimplifiedLayerNormalization",
     "SimplifiedLayerNormalization", "RotaryEmbedding"}
)  # fmt: skip
PROVIDER_OPTIONS = {"cuda": {}}  # provider -> the options the toolkit writes for it (none)
NAME = re.compile(r"[A-Za-z0-9_.%-]{1,128}")

Check = Callable[[Any], "str | None"]  # a validator: None when the value is fine, else what is wrong


def _int(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 31
    return None if ok else f"expected a non-negative integer, got {value!r}"


def _number(value: Any) -> str | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return None if ok else f"expected a number, got {value!r}"


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, got {value!r}"


def _name(value: Any) -> str | None:
    ok = isinstance(value, str) and NAME.fullmatch(value) is not None
    return None if ok else f"expected a plain name ({NAME.pattern}), got {value!r}"


def _token_ids(value: Any) -> str | None:
    if isinstance(value, list) and 0 < len(value) <= 64 and all(_int(v) is None for v in value):
        return None
    return _int(value)


def _provider_options(value: Any) -> str | None:
    if not isinstance(value, list) or len(value) > 1:
        return f"expected [] or one provider entry, got {value!r}"
    for entry in value:
        if not isinstance(entry, dict) or len(entry) != 1:
            return f"expected one {{provider: options}} entry, got {entry!r}"
        (provider, options), = entry.items()
        if provider not in PROVIDER_OPTIONS or options != PROVIDER_OPTIONS[provider]:
            allowed = [{name: options} for name, options in PROVIDER_OPTIONS.items()]
            return f"{entry!r} is not a provider entry the toolkit writes (allowed: {allowed})"
    return None


_IO = ("input_ids", "attention_mask", "position_ids", "past_key_names", "past_value_names")
_OUT = ("logits", "present_key_names", "present_value_names")
_SEARCH_BOOLS = ("do_sample", "past_present_share_buffer", "early_stopping")
_SEARCH_INTS = ("num_beams", "num_return_sequences", "max_length", "min_length", "top_k", "no_repeat_ngram_size")
_SEARCH_NUMBERS = ("temperature", "top_p", "repetition_penalty", "length_penalty", "diversity_penalty")
_DECODER_INTS = ("head_size", "hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers")

GENAI_SCHEMA: dict[str, Any] = {
    "model": {
        "type": _name,
        "bos_token_id": _token_ids,
        "eos_token_id": _token_ids,
        "pad_token_id": _token_ids,
        "vocab_size": _int,
        "context_length": _int,
        "decoder": {
            "filename": _name,  # and a file the manifest lists: artifact._check_genai_config
            "session_options": {"log_id": _name, "provider_options": _provider_options},
            **dict.fromkeys(_DECODER_INTS, _int),
            "inputs": dict.fromkeys(_IO, _name),
            "outputs": dict.fromkeys(_OUT, _name),
        },
    },
    "search": dict.fromkeys(_SEARCH_BOOLS, _bool) | dict.fromkeys(_SEARCH_INTS, _int) | dict.fromkeys(_SEARCH_NUMBERS, _number),
}


def check_genai_config(config: Any, source: str) -> None:
    """`BadInputError` unless `config` holds only keys and values of `GENAI_SCHEMA`."""
    _conform(config, GENAI_SCHEMA, source, "")


def _conform(value: Any, schema: dict[str, Any] | Check, source: str, where: str) -> None:
    if callable(schema):
        problem = schema(value)
        if problem:
            raise BadInputError(f"{source}: {where}: {problem}")
        return
    if not isinstance(value, dict):
        raise BadInputError(f"{source}: {where or 'the config'}: expected a JSON object, got {type(value).__name__}")
    for key, item in value.items():
        field = f"{where}.{key}" if where else str(key)
        if key not in schema:
            raise BadInputError(f"{source}: {field}: not a key the toolkit writes (an artifact may not set it)")
        _conform(item, schema[key], source, field)


def check_graph(directory: Path, onnx_name: str, files: dict[str, str]) -> None:
    """`BadInputError` when the graph uses an op the toolkit does not emit (a custom-op library would
    be needed) or names external data outside the files the manifest lists."""
    import onnx

    path = Path(directory) / onnx_name
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf's errors have no common base
        raise BadInputError(f"{path}: not a readable ONNX model ({type(err).__name__})") from None
    for graph in _graphs(model.graph):
        _check_ops(path, graph.node)
        for tensor in _tensors(graph):
            _check_external(path, tensor, files)
    if len(model.functions):
        raise BadInputError(f"{path}: defines {len(model.functions)} local function(s); the toolkit's graphs define none")


def _check_ops(path: Path, nodes: Any) -> None:
    for node in nodes:
        if node.domain in STANDARD_DOMAINS or (node.domain == MS_DOMAIN and node.op_type in CONTRIB_OPS):
            continue
        raise BadInputError(
            f"{path}: node '{node.name}' is {node.domain}::{node.op_type}, not an op the toolkit emits "
            f"(standard ONNX or {MS_DOMAIN}::{{{', '.join(sorted(CONTRIB_OPS))}}})"
        )


def _check_external(path: Path, tensor: Any, files: dict[str, str]) -> None:
    from onnx import TensorProto

    if tensor.data_location != TensorProto.EXTERNAL:
        return
    location = next((entry.value for entry in tensor.external_data if entry.key == "location"), None)
    if location not in files:
        raise BadInputError(
            f"{path}: tensor '{tensor.name}' keeps its data in {location!r}, not a file listed in the manifest"
        )


def _graphs(graph: Any) -> list[Any]:
    """`graph` and every subgraph held in a node attribute (If / Loop / Scan bodies), depth first."""
    found = [graph]
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                found += _graphs(sub)
    return found


def _tensors(graph: Any) -> list[Any]:
    """Every tensor the graph stores: initializers, sparse ones, and those held in node attributes."""
    tensors = list(graph.initializer)
    for sparse in graph.sparse_initializer:
        tensors += [sparse.values, sparse.indices]
    for node in graph.node:
        for attribute in node.attribute:
            tensors += ([attribute.t] if attribute.HasField("t") else []) + list(attribute.tensors)
    return tensors
