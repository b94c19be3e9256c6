"""Which layers and MLP neurons of a super-network matter, measured once on calibration text.

A pretrained LLaMA does not survive "keep the first N layers" (its last layer changes the hidden
state as much as its first) nor "keep the first s neurons" (neurons are in no particular order).
Before one-shot fine-tuning, and before any training-free pruning, the super-network is prepared:

- neurons: each MLP's neurons are permuted by importance, most important first (the function is
  unchanged), so a width's "first s" neurons are its s most important ones;
- layers: the block influence of layer i (ShortGPT) is the mean over tokens of
  1 - cos(h_in, h_out), how much the layer turns the hidden state; layers are dropped in
  ascending order of it (the space's `importance` depth policy and its `drop_order`).

`prepare_supernet` writes the prepared super-network as a new directory with `importance.json`
(the figures, the drop order, and the calibration data they came from).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..concepts import SUPERNET_FILES
from ..data import chunk, load_tokenizer, read_texts, tokenize
from ..errors import BadInputError
from ..jsonfiles import check_out_dir, new_directory, read_json, write_json
from ..progress import Callback, report
from .build import save_model
from .families import resolve_model_path
from .supernet import SuperNetwork

IMPORTANCE_FILE = "importance.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Importance:
    """What `prepare_supernet` measured: per-layer block influence and the order layers are dropped in."""

    block_influence: tuple[float, ...]
    data: str
    tokens: int
    seq_len: int

    @property
    def drop_order(self) -> tuple[int, ...]:
        """Every layer index once, least influential first (ties: the later layer first)."""
        layers = range(len(self.block_influence))
        return tuple(sorted(layers, key=lambda i: (self.block_influence[i], -i)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "layer_metric": "block_influence = mean over tokens of 1 - cos(h_in, h_out)",
            "block_influence": [round(v, 6) for v in self.block_influence],
            "drop_order": list(self.drop_order),
            "neurons": "MLP neurons ordered by mean |act(gate) * up| x ||down_proj column||, most important first",
            "calibration": {"data": self.data, "tokens": self.tokens, "seq_len": self.seq_len},
        }


def read_drop_order(model_dir: Path) -> tuple[int, ...]:
    """The drop order `importance.json` of a prepared super-network records; `BadInputError` without one."""
    path = Path(model_dir) / IMPORTANCE_FILE
    if not path.is_file():
        raise BadInputError(
            f"{model_dir}: no {IMPORTANCE_FILE}; a space with the 'importance' depth policy needs a super-network "
            "prepared by `llamanas prepare` (neurons ordered, layer drop order measured)"
        )
    data = read_json(path, "importance file")
    order = data.get("drop_order") if isinstance(data, dict) else None
    if not isinstance(order, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in order):
        raise BadInputError(f"{path}: drop_order must be a list of layer indices, got {order!r}")
    return tuple(order)


@dataclass
class _Activations:
    """What one pass over calibration batches collects: per-layer sums of 1 - cos(h_in, h_out) and of
    each MLP neuron's |act(gate) * up|, and the number of tokens."""

    influence: torch.Tensor
    neurons: list[torch.Tensor]
    tokens: int = 0


def _collect(model: nn.Module, batches: Sequence[torch.Tensor]) -> _Activations:
    layers = model.model.layers
    seen = _Activations(torch.zeros(len(layers), dtype=torch.float64),
                        [torch.zeros(layer.mlp.down_proj.in_features) for layer in layers])  # fmt: skip
    hooks = [layer.register_forward_hook(_add_influence(seen.influence, i)) for i, layer in enumerate(layers)]
    hooks += [layer.mlp.down_proj.register_forward_pre_hook(_accumulate(seen.neurons[i])) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for batch in batches:
                model(input_ids=batch, use_cache=False)
                seen.tokens += batch.numel()
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def block_influence(model: nn.Module, batches: Sequence[torch.Tensor]) -> tuple[float, ...]:
    """1 - cos(h_in, h_out) of every decoder layer, averaged over all tokens of `batches`."""
    return _influence(_collect(model, batches))


def _influence(seen: _Activations) -> tuple[float, ...]:
    return tuple((seen.influence / seen.tokens).tolist())


def _add_influence(totals: torch.Tensor, index: int):
    def hook(_module, args, output):
        h_out = output[0] if isinstance(output, tuple) else output
        cos = torch.nn.functional.cosine_similarity(args[0].float(), h_out.float(), dim=-1)
        totals[index] += (1 - cos).sum().item()

    return hook


def reorder_neurons_(model: nn.Module, batches: Sequence[torch.Tensor]) -> None:
    """Permute each MLP's neurons by importance, most important first; the function is unchanged.

    Importance of neuron j: mean |act(gate_j(x)) * up_j(x)| over the batches' tokens times the
    norm of its output column `down_proj[:, j]`.
    """
    _permute_neurons_(model, _collect(model, batches).neurons)


def _permute_neurons_(model: nn.Module, sums: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for layer, total in zip(model.model.layers, sums):
            mlp = layer.mlp
            order = torch.argsort(total * mlp.down_proj.weight.norm(dim=0), descending=True)
            for proj in (mlp.gate_proj, mlp.up_proj):
                proj.weight.copy_(proj.weight[order])
                if proj.bias is not None:
                    proj.bias.copy_(proj.bias[order])
            mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, order])


def _accumulate(total: torch.Tensor):
    def hook(_module, args):
        total.add_(args[0].detach().abs().reshape(-1, args[0].shape[-1]).sum(0))

    return hook


def calibration_batches(model_dir: str | Path, data: str, max_tokens: int, seq_len: int) -> list[torch.Tensor]:
    """Rows of `seq_len` tokens of `data` (a file or a built-in corpus), tokenized for the model, 8 rows a batch."""
    rows = chunk(tokenize(read_texts(data), load_tokenizer(model_dir), eos_id=None), seq_len, max_tokens)
    return list(rows.split(8))


def prepare_supernet(
    model: str | Path,
    out: str | Path,
    data: str = "pydoc-train",
    max_tokens: int = 4096,
    seq_len: int = 256,
    callback: Callback = None,
) -> tuple[Path, Importance]:
    """Reorder `model`'s neurons by importance, measure its layers' block influence, and write the
    prepared super-network to `out` (new or empty) with `importance.json` and the model's other files."""
    out = Path(out)
    check_out_dir(out)  # before the slow load
    supernet = SuperNetwork.load(model)
    batches = calibration_batches(supernet.source, data, max_tokens, seq_len)
    report(callback, "importance", message=f"measuring neurons and layers on {sum(b.numel() for b in batches):,} "
                                           f"tokens of {data}")  # fmt: skip
    seen = _collect(supernet.model, batches)  # one pass: block influence does not change with the neuron order
    _permute_neurons_(supernet.model, seen.neurons)
    importance = Importance(_influence(seen), str(data), seen.tokens, seq_len)
    source_dir = Path(resolve_model_path(model))
    with new_directory(out) as tmp:
        save_model(supernet.model, tmp)
        for name in SUPERNET_FILES:
            if (source_dir / name).is_file() and name != IMPORTANCE_FILE:
                shutil.copyfile(source_dir / name, tmp / name)
        write_json(tmp / IMPORTANCE_FILE, importance.to_dict())
    return out, importance
