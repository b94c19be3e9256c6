"""Build, load and save LLaMA models whose decoder layers may have different MLP widths.

transformers' `LlamaForCausalLM` holds one `intermediate_size` for all layers and its
`from_pretrained` fails on a sliced checkpoint, so the project builds the model itself:
the skeleton is a real `LlamaForCausalLM` whose MLP modules are swapped for ones of the
right width, and weights come from safetensors files only (never pickles).

A saved sub-network's `config.json` records `intermediate_sizes` (one per kept layer) and
a `llamanas` block (kept layers, space, source super-network).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import BadInputError
from ..jsonfiles import write_json
from .families import ModelShape, family_for, read_config_dict

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def layer_widths(config_dict: dict[str, Any], source: str = "config") -> list[int]:
    """Per-layer MLP widths recorded in a config (a plain checkpoint has one width for all)."""
    shape = ModelShape.from_config_dict(config_dict, source)
    sizes = config_dict.get("intermediate_sizes")
    if sizes is None:
        return [shape.intermediate_size] * shape.num_hidden_layers
    if (
        not isinstance(sizes, list)
        or len(sizes) != shape.num_hidden_layers
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes)
    ):
        raise BadInputError(
            f"{source}: intermediate_sizes must list {shape.num_hidden_layers} positive integers "
            f"(one per layer), got {sizes!r}"
        )
    return list(sizes)


def hf_config_for(config_dict: dict[str, Any], intermediate_sizes: list[int], source: str):
    """The transformers config of a model with these per-layer widths."""
    ModelShape.from_config_dict(config_dict, source)  # refuses other families and incomplete configs
    family = family_for(config_dict["model_type"], source)
    cfg = dict(config_dict)
    cfg.update(
        num_hidden_layers=len(intermediate_sizes),
        intermediate_size=max(intermediate_sizes),
        intermediate_sizes=list(intermediate_sizes),
    )
    return family.hf_config(cfg)


def build_skeleton(hf_config, dtype: torch.dtype = torch.float32, device: str = "cpu") -> nn.Module:
    """An uninitialized model (memory allocated, values undefined) with per-layer MLP widths.

    The parameters are allocated once, on `device` and in `dtype` (the cast happens on the
    meta device, where it costs nothing): no float32 copy is ever made.
    """
    family = family_for(hf_config.model_type, "config")
    sizes = list(hf_config.intermediate_sizes)
    with torch.device("meta"):
        model = family.causal_lm_class()(hf_config)
        for layer, size in zip(model.model.layers, sizes):
            if size != hf_config.intermediate_size:
                layer.mlp = type(layer.mlp)(_with_width(hf_config, size))
    model.to(dtype).to_empty(device=device)
    # non-persistent buffers (rotary frequencies) were on the meta device: rebuild them after the
    # dtype cast, so they stay in float32 as transformers keeps them
    with torch.device(device):
        model.model.rotary_emb = type(model.model.rotary_emb)(config=hf_config)
    model.tie_weights()
    return model.eval()


def _with_width(hf_config, size: int):
    cfg = copy.copy(hf_config)
    cfg.intermediate_size = size
    return cfg


def init_random_(model: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Random weights (norm scales at 1), drawn in place in each parameter's own dtype and device."""
    generators: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif param.dim() == 1:
                param.zero_()
            else:
                if param.device not in generators:
                    generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
                param.normal_(0.0, std, generator=generators[param.device])
    return model


TIMING_POOL = 1 << 22  # random values drawn per model for `init_for_timing_`; every matrix is tiled from them


def init_for_timing_(model: nn.Module, seed: int = 0, std: float = 0.02) -> nn.Module:
    """Weights for latency measurement, in seconds even for a 7B model: no extra copy of the model.

    Latency does not depend on weight values, so `TIMING_POOL` values are drawn once (on the
    model's device, in its dtype) and every matrix is filled by tiling them from its own offset:
    a memory-bound copy instead of billions of random draws. The values are finite and no
    smaller in magnitude than `std / 16` (never denormal, even in float16, where denormals
    would slow some CPUs down); norm scales are 1 and biases 0, as in `init_random_`.
    """
    params = list(model.named_parameters())
    device, dtype = params[0][1].device, params[0][1].dtype
    gen = torch.Generator(device=device).manual_seed(seed)
    pool = torch.randn(TIMING_POOL, generator=gen, device=device) * std
    pool = torch.where(pool.abs() < std / 16, torch.copysign(torch.full_like(pool, std / 16), pool), pool)
    pool = torch.cat([pool, pool]).to(dtype)  # doubled, so any window of TIMING_POOL values is contiguous
    with torch.no_grad():
        for index, (name, param) in enumerate(params):
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif param.dim() == 1:
                param.zero_()
            else:
                _tile_(param.view(-1), pool, offset=(index * 7919) % TIMING_POOL)
    return model


def _tile_(flat: torch.Tensor, pool: torch.Tensor, offset: int) -> None:
    """Fill `flat` with `pool[offset:offset + TIMING_POOL]` repeated."""
    window = pool[offset : offset + TIMING_POOL]
    whole, rest = divmod(flat.numel(), TIMING_POOL)
    if whole:
        flat[: whole * TIMING_POOL].view(whole, TIMING_POOL).copy_(window.expand(whole, TIMING_POOL))
    if rest:
        flat[whole * TIMING_POOL :].copy_(window[:rest])


def read_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint."""
    from safetensors.torch import load_file

    index = model_dir / INDEX_NAME
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [model_dir / s for s in shards]
    elif (model_dir / WEIGHTS_NAME).is_file():
        files = [model_dir / WEIGHTS_NAME]
    else:
        found = sorted(p.name for p in model_dir.iterdir())
        hint = " (pickled .bin checkpoints are never loaded; convert them to safetensors)" if any(
            n.endswith(".bin") for n in found
        ) else ""
        raise BadInputError(f"{model_dir}: no {WEIGHTS_NAME} or {INDEX_NAME}{hint}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            state.update(load_file(str(file)))
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise BadInputError(f"{file}: cannot read safetensors weights ({err})") from None
    return state


def load_model(
    name_or_path: str | Path, dtype: torch.dtype = torch.float32
) -> tuple[nn.Module, dict[str, Any], Path]:
    """Load a super-network checkpoint or a saved sub-network; returns (model, config dict, directory)."""
    config_dict, config_path = read_config_dict(name_or_path)
    model_dir = config_path.parent
    source = str(config_path)
    hf_config = hf_config_for(config_dict, layer_widths(config_dict, source), source)
    skeleton = build_skeleton(hf_config, dtype=dtype, device="meta")
    state = read_state_dict(model_dir)
    expected = skeleton.state_dict()
    tied = tied_weight_keys(skeleton)
    for key, shared in tied.items():  # a tied checkpoint may store the shared tensor under either name
        if shared not in state and key in state:
            state[shared] = state.pop(key)
    missing = [k for k in expected if k not in state and k not in tied]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise BadInputError(
            f"{model_dir}: weights do not match config.json (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    bad = [k for k, t in state.items() if tuple(t.shape) != tuple(expected[k].shape)]
    if bad:
        k = bad[0]
        raise BadInputError(
            f"{model_dir}: tensor {k} has shape {tuple(state[k].shape)}, config.json implies {tuple(expected[k].shape)}"
        )
    return assemble(skeleton, {k: v.to(dtype) for k, v in state.items()}), config_dict, model_dir


def assemble(skeleton: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """`skeleton` (a `build_skeleton` on the meta device) whose parameters are `state`'s tensors
    themselves, not copies (views stay views); a tied LM head is tied to the embedding."""
    skeleton.load_state_dict(state, strict=False, assign=True)
    with torch.device(next(iter(state.values())).device):
        skeleton.model.rotary_emb = type(skeleton.model.rotary_emb)(config=skeleton.config)
    skeleton.tie_weights()
    return skeleton.eval()


def save_model(
    model: nn.Module,
    out_dir: str | Path,
    extra_config: dict[str, Any] | None = None,
    *,
    dtype: str | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write `config.json` + `model.safetensors` atomically; the config records per-layer MLP widths.

    `dtype` ("float16", ...) casts the stored tensors; `state_dict` replaces the model's own (a
    sharded model's weights gathered into full tensors), keyed as `model.state_dict()`.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config["intermediate_sizes"] = [layer.mlp.down_proj.in_features for layer in model.model.layers]
    config["num_hidden_layers"] = len(model.model.layers)
    config.update(extra_config or {})
    cast = getattr(torch, dtype) if dtype else None
    # a tied tensor is stored once, under its source name (as transformers does)
    tied = tied_weight_keys(model)
    state = {
        k: v.detach().to(device="cpu", dtype=cast).contiguous()
        for k, v in (model.state_dict() if state_dict is None else state_dict).items()
        if k not in tied
    }
    tmp = out_dir / f".{WEIGHTS_NAME}.tmp"
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.chmod(0o644)
    tmp.replace(out_dir / WEIGHTS_NAME)
    write_json(out_dir / "config.json", config, sort_keys=True)
    return out_dir


def tied_weight_keys(model: nn.Module) -> dict[str, str]:
    """{tied parameter name: the name it shares its tensor with}; empty when embeddings are untied."""
    if not model.config.tie_word_embeddings:
        return {}
    return dict(getattr(model, "_tied_weights_keys", None) or {})


def shape_of(model: nn.Module) -> ModelShape:
    return ModelShape.from_config_dict(model.config.to_dict(), "model")
