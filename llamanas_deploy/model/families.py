"""Model families: one small adapter per architecture, and the shape record read from `config.json`.

Adding a family (say, one whose MLP projections are named differently) is one more
`ModelFamily` in `FAMILIES`; nothing else keys on the family name.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInputError
from ..jsonfiles import checked_integer, field_error, read_json
from .packaged import PACKAGED_MODELS, packaged_model_dir

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
BUILTIN_MODELS = {"tiny": ASSETS_DIR / "tiny"}


@dataclass(frozen=True)
class ModelFamily:
    name: str
    model_types: tuple[str, ...]
    mlp_projections: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")

    def hf_config(self, config_dict: dict[str, Any]):
        from transformers import AutoConfig

        kwargs = {k: v for k, v in config_dict.items() if k != "model_type"}
        return AutoConfig.for_model(config_dict["model_type"], **kwargs)

    def causal_lm_class(self):
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM


FAMILIES = (ModelFamily("llama", ("llama",)),)


def family_for(model_type: str, source: str) -> ModelFamily:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    supported = sorted(t for f in FAMILIES for t in f.model_types)
    raise BadInputError(f"{source}: model_type '{model_type}' is not supported (supported: {supported})")


POSITIVE_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size",
)
REQUIRED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
FLAG_FIELDS = ("tie_word_embeddings", "attention_bias", "mlp_bias")  # absent: false


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a LLaMA-family `config.json` that costs and slicing depend on."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    mlp_bias: bool = False

    @property
    def id(self) -> str:
        """12-hex hash of the shape: the same sub-network of another model is another measurement."""
        import hashlib

        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    @classmethod
    def from_config_dict(cls, cfg: dict[str, Any], source: str) -> "ModelShape":
        """The shape a config describes; `BadInputError` naming `source` and the field for a missing field,
        a number that is not a positive integer (1.5 or true is not truncated) or a flag that is not a bool."""
        family_for(cfg.get("model_type", "<missing>"), source)
        missing = next((name for name in REQUIRED_FIELDS if name not in cfg), None)
        if missing is not None:
            raise BadInputError(f"{source}: missing field '{missing}' in the model config")
        sizes = {name: checked_integer(cfg[name], source, name) for name in REQUIRED_FIELDS}
        heads = sizes["num_attention_heads"]
        derived = {"num_key_value_heads": heads, "head_dim": sizes["hidden_size"] // heads}  # when absent or null
        sizes |= {name: default if cfg.get(name) is None else checked_integer(cfg[name], source, name)
                  for name, default in derived.items()}  # fmt: skip
        flags = {name: cfg.get(name, False) for name in FLAG_FIELDS}
        for name, value in flags.items():
            if not isinstance(value, bool):
                raise field_error(source, name, "true or false", value)
        shape = cls(model_type=cfg["model_type"], **sizes, **flags)
        shape._check(source)
        return shape

    def _check(self, source: str) -> None:
        for name in POSITIVE_FIELDS:
            if getattr(self, name) < 1:
                raise BadInputError(f"{source}: {name} must be a positive integer, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise BadInputError(
                f"{source}: num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )


def resolve_model_path(name_or_path: str | Path) -> Path:
    """A built-in model name (`tiny`), a packaged model's name (`smollm2-135m`: imported on first use,
    see `packaged.py`), or a path to a checkpoint directory or a `config.json`."""
    name = str(name_or_path)
    if name in PACKAGED_MODELS:
        return packaged_model_dir(name)
    return BUILTIN_MODELS.get(name, Path(name_or_path))


def read_config_dict(name_or_path: str | Path) -> tuple[dict[str, Any], Path]:
    """Read `config.json` from a model directory, a config file, or a built-in model name."""
    path = resolve_model_path(name_or_path)
    config_path = path / "config.json" if path.is_dir() else path
    if not config_path.is_file():
        raise BadInputError(f"{name_or_path}: no such model directory or config.json")
    cfg = read_json(config_path, "model config")
    if not isinstance(cfg, dict):
        raise BadInputError(f"{config_path}: expected a JSON object")
    return cfg, config_path


def read_shape(name_or_path: str | Path) -> ModelShape:
    cfg, config_path = read_config_dict(name_or_path)
    return ModelShape.from_config_dict(cfg, str(config_path))
