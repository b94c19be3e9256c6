"""The super-network, and its sub-networks: as views (no copy) or extracted as standalone models.

`jsonfiles.new_directory` is the one rule for the directories the toolkit creates as a whole (an extracted
sub-network here, an ONNX artifact in `export/`): the target must not exist or be empty, and
the result appears there complete or not at all.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import BadInputError
from ..jsonfiles import check_out_dir, new_directory
from ..progress import Callback, report
from ..space import SearchSpace
from ..subnet_config import SubnetConfig
from .build import assemble, build_skeleton, hf_config_for, init_for_timing_, init_random_, layer_widths, load_model, save_model
from .families import ModelShape, read_config_dict


class SlicedMLP(nn.Module):
    """A view of an MLP that uses only its first `size` neurons; weights are shared, not copied."""

    def __init__(self, mlp: nn.Module, size: int):
        super().__init__()
        self.mlp = mlp
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, m = self.size, self.mlp
        gate = F.linear(x, m.gate_proj.weight[:s], _head(m.gate_proj.bias, s))
        up = F.linear(x, m.up_proj.weight[:s], _head(m.up_proj.bias, s))
        return F.linear(m.act_fn(gate) * up, m.down_proj.weight[:, :s], m.down_proj.bias)


def _head(bias: torch.Tensor | None, size: int) -> torch.Tensor | None:
    return None if bias is None else bias[:size]


@dataclass
class SuperNetwork:
    model: nn.Module
    config: dict[str, Any]
    source: Path

    @classmethod
    def load(cls, name_or_path: str | Path, dtype: torch.dtype = torch.float32) -> "SuperNetwork":
        """Load a local checkpoint directory (or a built-in name such as `tiny`); never downloads."""
        return cls(*load_model(name_or_path, dtype=dtype))

    @classmethod
    def random(cls, name_or_path: str | Path, seed: int = 0) -> "SuperNetwork":
        """The whole super-network with random weights, from `config.json` alone (small models only)."""
        config, config_path = read_config_dict(name_or_path)
        source = str(config_path)
        hf_config = hf_config_for(config, layer_widths(config, source), source)
        return cls(init_random_(build_skeleton(hf_config), seed), config, config_path.parent)

    @property
    def shape(self) -> ModelShape:
        return ModelShape.from_config_dict(self.config, str(self.source))

    def check_space(self, space: SearchSpace) -> None:
        """Refuse a space of another shape, or one whose layer drop order was not measured on this model."""
        space.check_super_network(self.model.config, str(self.source))
        if space.layer_policy == "importance":
            from .importance import read_drop_order

            measured = read_drop_order(self.source)
            if measured != space.drop_order:
                raise BadInputError(
                    f"{self.source}: its measured layer drop order {list(measured)} is not space {space.name}'s "
                    f"{list(space.drop_order)}; use the super-network `llamanas prepare` measured for that space"
                )

    def weights_sha256(self) -> str:
        """Hash of the weights as loaded (dtype included): identifies the super-network in manifests."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    @contextmanager
    def activate(self, subnet: SubnetConfig) -> Iterator[nn.Module]:
        """Temporarily turn the model into `subnet` (views of the shared weights); restored on exit.

        Gradients flow into the super-network's weights, which is what one-shot fine-tuning needs.
        """
        self._check_fits(subnet)
        inner = self.model.model
        all_layers, depth = inner.layers, self.model.config.num_hidden_layers
        kept = [all_layers[i] for i in subnet.kept_layers]
        saved = [(layer, layer.mlp, layer.self_attn.layer_idx) for layer in kept]
        for new_index, (layer, size) in enumerate(zip(kept, subnet.intermediate_sizes)):
            if size != layer.mlp.down_proj.in_features:
                layer.mlp = SlicedMLP(layer.mlp, size)
            layer.self_attn.layer_idx = new_index
        inner.layers = nn.ModuleList(kept)
        self.model.config.num_hidden_layers = subnet.num_layers
        try:
            yield self.model
        finally:
            for layer, mlp, index in saved:
                layer.mlp, layer.self_attn.layer_idx = mlp, index
            inner.layers = all_layers
            self.model.config.num_hidden_layers = depth

    def extract(self, subnet: SubnetConfig, *, copy: bool = True) -> nn.Module:
        """A standalone model of exactly the kept weights, layers renumbered.

        `copy=False`: its tensors are views of the super-network's (no memory; what an export that
        only reads them uses), so a change to either shows in both.
        """
        self._check_fits(subnet)
        hf_config = hf_config_for(self.config, list(subnet.intermediate_sizes), str(self.source))
        dtype = next(self.model.parameters()).dtype
        source = self.model.state_dict()
        if not copy:
            skeleton = build_skeleton(hf_config, dtype=dtype, device="meta")
            return assemble(skeleton, {name: self._kept(source, subnet, name) for name in skeleton.state_dict()})
        model = build_skeleton(hf_config, dtype=dtype)
        with torch.no_grad():  # straight into the skeleton's tensors: no second copy of the weights
            for name, target in model.state_dict().items():
                target.copy_(self._kept(source, subnet, name))
        model.tie_weights()
        return model.eval()

    @staticmethod
    def _kept(source: dict[str, torch.Tensor], subnet: SubnetConfig, name: str) -> torch.Tensor:
        """The super-network's tensor (a view of it) that holds the sub-network's tensor `name`."""
        if not name.startswith("model.layers."):
            return source[name]
        new_index, rest = name[len("model.layers.") :].split(".", 1)
        tensor = source[f"model.layers.{subnet.kept_layers[int(new_index)]}.{rest}"]
        return _slice_mlp(rest, tensor, subnet.intermediate_sizes[int(new_index)])

    def _check_fits(self, subnet: SubnetConfig) -> None:
        """Refuse a sub-network this super-network does not contain (a missing layer, a wider MLP)."""
        layers = self.model.model.layers
        for index, size in zip(subnet.kept_layers, subnet.intermediate_sizes):
            if index >= len(layers):
                raise BadInputError(
                    f"{self.source}: sub-network keeps layer {index}, but the super-network has {len(layers)} layers"
                )
            width = layers[index].mlp.down_proj.in_features
            if size > width:
                raise BadInputError(
                    f"{self.source}: layer {index}: intermediate size {size} exceeds the super-network's {width}"
                )

    def save_subnet(self, subnet: SubnetConfig, out_dir: str | Path, space: SearchSpace | None = None) -> Path:
        """Extract `subnet` and write it as a new directory the project's loader reads back exactly.

        `out_dir` must not exist or be empty (`BadInputError` otherwise); it appears complete or not at all.
        """
        meta = {
            "subnet": subnet.to_dict(),
            "subnet_id": subnet.id,
            "kept_layers": list(subnet.kept_layers),
            "super_network": {"path": str(self.source), "num_hidden_layers": self.config["num_hidden_layers"]},
        }
        if space is not None:
            meta["space_id"] = space.id
        with new_directory(out_dir) as tmp:
            save_model(self.extract(subnet), tmp, {"llamanas": meta})
        return Path(out_dir)


def load_supernet(supernet: SuperNetwork | str | Path, space: SearchSpace) -> SuperNetwork:
    """`supernet` as is when loaded, else loaded from its directory or built-in name; refused unless it
    is the super-network `space` was made for (`SuperNetwork.check_space`).

    The one place a stage turns "a super-network or its name" into a checked super-network."""
    loaded = supernet if isinstance(supernet, SuperNetwork) else SuperNetwork.load(supernet)
    loaded.check_space(space)
    return loaded


def extract_subnet(
    model: SuperNetwork | str | Path,
    space: SearchSpace,
    subnet: SubnetConfig | str,
    out: str | Path,
    callback: Callback = None,
) -> Path:
    """Save `subnet` of `model` (checked against `space`; a string goes through `space.resolve`)
    as a standalone model directory `out`, which must be new or empty."""
    check_out_dir(Path(out))  # before the slow load
    subnet = space.resolve(subnet)
    supernet = load_supernet(model, space)
    report(callback, "extract", message=f"extracting {subnet.id} ({subnet.num_layers} layers) from {supernet.source}")
    return supernet.save_subnet(subnet, out, space)


def _slice_mlp(param_name: str, tensor: torch.Tensor, size: int) -> torch.Tensor:
    if param_name.startswith(("mlp.gate_proj.", "mlp.up_proj.")):
        return tensor[:size]
    if param_name == "mlp.down_proj.weight":
        return tensor[:, :size]
    return tensor


def random_subnet_model(
    name_or_path: str | Path, subnet: SubnetConfig, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> nn.Module:
    """Only the sub-network, with random weights, from `config.json`: memory of one sub-network.

    Latency does not depend on weight values, so this is how a 7B-shaped space is profiled
    without its checkpoint. The weights are made on `device` in `dtype` directly
    (`build.init_for_timing_`): seconds and the sub-network's own bytes, even at 7B.
    """
    config, config_path = read_config_dict(name_or_path)
    hf_config = hf_config_for(config, list(subnet.intermediate_sizes), str(config_path))
    return init_for_timing_(build_skeleton(hf_config, dtype=dtype, device=device), seed)
