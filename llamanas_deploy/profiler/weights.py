"""One sub-network's model for profiling, never the whole super-network.

- from a checkpoint (`model.safetensors` or a sharded index next to `config.json`): only the
  kept layers' tensors are read, already sliced, through safetensors' lazy slices;
- from `config.json` alone: random weights (latency does not depend on weight values), which
  is how a 7B-shaped space is profiled without its 13 GB checkpoint.

`weights="auto"` takes the checkpoint when there is one; the profile records which was used.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInputError
from ..jsonfiles import read_json
from ..model.families import read_config_dict
from ..subnet_config import SubnetConfig


def checkpoint_files(model_dir: Path) -> dict[str, Path] | None:
    """tensor name -> safetensors file, or None when the directory holds no weights."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "safetensors index")
        if not isinstance(weight_map, dict) or not isinstance(weight_map.get("weight_map"), dict):
            raise BadInputError(f"{index}: not a safetensors index (no weight_map object)")
        return {name: model_dir / file for name, file in weight_map["weight_map"].items()}
    single = model_dir / "model.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return {name: single for name in f.keys()}
    return None


def weights_source(model: str | Path, weights: str) -> str:
    """"checkpoint" or "random": what `weights` means for this model directory."""
    _, config_path = read_config_dict(model)
    has_checkpoint = checkpoint_files(config_path.parent) is not None
    if weights == "checkpoint" and not has_checkpoint:
        raise BadInputError(f"checkpoint: {config_path.parent} has no model.safetensors (or index)", param="weights")
    return "checkpoint" if weights != "random" and has_checkpoint else "random"


def subnet_model(model: str | Path, subnet: SubnetConfig, dtype, source: str, seed: int = 0, device: str = "cpu"):
    """The sub-network as a standalone `LlamaForCausalLM` on `device` in `dtype`, in eval mode.

    Its parameters are allocated once, where and as they are used: random weights are made
    there (`build.init_for_timing_`), checkpoint tensors are read one at a time and copied there.
    """
    from ..model.build import build_skeleton, hf_config_for
    from ..model.supernet import random_subnet_model

    if source == "random":
        return random_subnet_model(model, subnet, seed, dtype=dtype, device=device).eval()
    config, config_path = read_config_dict(model)
    hf_config = hf_config_for(config, list(subnet.intermediate_sizes), str(config_path))
    built = build_skeleton(hf_config, dtype=dtype, device=device)
    _fill_from_checkpoint(built, subnet, checkpoint_files(config_path.parent), config_path.parent)
    built.tie_weights()
    return built.eval()


def _fill_from_checkpoint(model, subnet: SubnetConfig, files: dict[str, Path], model_dir: Path) -> None:
    """Copy each tensor of `model` from the kept layer of the checkpoint, sliced to its width."""
    import torch
    from safetensors import safe_open

    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    handles = {}
    try:
        with torch.no_grad():
            for name, param in model.state_dict().items():
                source = _source_name(name, subnet)
                if source not in files:
                    if tied and name == "lm_head.weight":
                        continue
                    raise BadInputError(f"{model_dir}: checkpoint has no tensor {source}")
                file = files[source]
                if file not in handles:
                    handles[file] = safe_open(str(file), framework="pt")
                tensor = _read_slice(handles[file].get_slice(source), tuple(param.shape), source, model_dir)
                param.copy_(tensor)  # one tensor at a time, cast and moved into place by copy_
    finally:
        handles.clear()


def _source_name(name: str, subnet: SubnetConfig) -> str:
    if not name.startswith("model.layers."):
        return name
    index, rest = name[len("model.layers.") :].split(".", 1)
    return f"model.layers.{subnet.kept_layers[int(index)]}.{rest}"


def _read_slice(lazy, shape: tuple[int, ...], name: str, model_dir: Path):
    """The leading block of `shape` of a stored tensor (first neurons kept, as elastic training does)."""
    stored = tuple(lazy.get_shape())
    sliceable = ".mlp." in name  # only MLP widths are elastic; every other tensor must match exactly
    if len(stored) != len(shape) or any(s < w or (s != w and not sliceable) for s, w in zip(stored, shape)):
        raise BadInputError(f"{model_dir}: tensor {name} has shape {stored}, the sub-network needs {shape}")
    return lazy[tuple(slice(0, w) for w in shape)]
