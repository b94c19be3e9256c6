"""Declarative ONNX export configs: one small config per architecture, the one place I/O lives.

Names and dynamic axes follow Hugging Face Optimum's convention for decoders with a KV cache::

    inputs   input_ids [batch_size, sequence_length]
             attention_mask [batch_size, total_sequence_length]      (past + new tokens)
             position_ids [batch_size, sequence_length]
             past_key_values.{i}.key / .value [batch_size, kv_heads, past_sequence_length, head_dim]
    outputs  logits [batch_size, sequence_length, vocab]
             present.{i}.key / .value [batch_size, kv_heads, past_sequence_length + sequence_length, head_dim]

The exporter builds its dynamic shapes from these axes, the verifier checks the session's
names and shapes against them, and `genai_config.json` is written from them. Adding a family
is one more `DecoderOnnxConfig` subclass in `ONNX_CONFIGS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import BadInputError
from ..model.families import ModelShape

ONNX_NAME = "model.onnx"  # the artifact's graph file
BATCH = "batch_size"
SEQUENCE = "sequence_length"
PAST = "past_sequence_length"
TOTAL = "total_sequence_length"
PRESENT = f"{PAST} + {SEQUENCE}"
PAST_KEY, PAST_VALUE = "past_key_values.%d.key", "past_key_values.%d.value"
PRESENT_KEY, PRESENT_VALUE = "present.%d.key", "present.%d.value"


@dataclass(frozen=True)
class DecoderOnnxConfig:
    """Inputs, outputs and dynamic axes of one exported decoder (sizes of the sub-network)."""

    model_types: ClassVar[tuple[str, ...]] = ()
    genai_type: ClassVar[str] = ""
    opset: ClassVar[int] = 20

    num_layers: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int

    @classmethod
    def from_config_dict(cls, config: dict[str, Any], source: str) -> "DecoderOnnxConfig":
        shape = ModelShape.from_config_dict(config, source)
        return cls(
            num_layers=shape.num_hidden_layers,
            num_attention_heads=shape.num_attention_heads,
            num_kv_heads=shape.num_key_value_heads,
            head_dim=shape.head_dim,
            hidden_size=shape.hidden_size,
            vocab_size=shape.vocab_size,
        )

    # ---- names and axes ---------------------------------------------------------------------
    @property
    def past_names(self) -> list[str]:
        return [name % i for i in range(self.num_layers) for name in (PAST_KEY, PAST_VALUE)]

    @property
    def present_names(self) -> list[str]:
        return [name % i for i in range(self.num_layers) for name in (PRESENT_KEY, PRESENT_VALUE)]

    @property
    def inputs(self) -> dict[str, dict[int, str]]:
        """Input name -> {axis: dynamic axis name}, in the graph's input order."""
        axes = {
            "input_ids": {0: BATCH, 1: SEQUENCE},
            "attention_mask": {0: BATCH, 1: TOTAL},
            "position_ids": {0: BATCH, 1: SEQUENCE},
        }
        return axes | {name: {0: BATCH, 2: PAST} for name in self.past_names}

    @property
    def outputs(self) -> dict[str, dict[int, str]]:
        """Output name -> {axis: dynamic axis name}, in the graph's output order."""
        return {"logits": {0: BATCH, 1: SEQUENCE}} | {name: {0: BATCH, 2: PRESENT} for name in self.present_names}

    # ---- concrete shapes (for dummy inputs and checks) ----------------------------------------
    def kv_shape(self, batch: int, length: int) -> tuple[int, int, int, int]:
        return (batch, self.num_kv_heads, length, self.head_dim)

    def output_shapes(self, batch: int, seq: int, past: int) -> dict[str, tuple[int, ...]]:
        """What every output must measure for a call with these sizes."""
        shapes: dict[str, tuple[int, ...]] = {"logits": (batch, seq, self.vocab_size)}
        return shapes | {name: self.kv_shape(batch, past + seq) for name in self.present_names}


@dataclass(frozen=True)
class LlamaOnnxConfig(DecoderOnnxConfig):
    model_types: ClassVar[tuple[str, ...]] = ("llama",)
    genai_type: ClassVar[str] = "llama"


ONNX_CONFIGS: tuple[type[DecoderOnnxConfig], ...] = (LlamaOnnxConfig,)


def onnx_config_for(config: dict[str, Any], source: str) -> DecoderOnnxConfig:
    """The export config of a model's `config.json` (as a dict); `BadInputError` for other families."""
    model_type = config.get("model_type", "<missing>")
    for cls in ONNX_CONFIGS:
        if model_type in cls.model_types:
            return cls.from_config_dict(config, source)
    known = sorted(t for cls in ONNX_CONFIGS for t in cls.model_types)
    raise BadInputError(f"{source}: no ONNX export config for model_type '{model_type}' (known: {known})")
