"""fp32 ONNX export of a decoder with a KV cache, through the dynamo exporter (`torch.export`).

transformers' models take a `Cache` object, which `torch.export` cannot take as an input;
`KVCacheWrapper` takes plain tensors instead and builds the cache inside `forward`. The
past tensors travel as one tuple argument, so `dynamic_shapes` gives them one nested tuple
of axes. Every name and axis comes from the model's `DecoderOnnxConfig`.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from ..model.compat import cache_tensors, forward_with_cache, returned_cache
from .config import ONNX_NAME, PAST, DecoderOnnxConfig

# protobuf cannot hold more than 2 GiB: bigger models keep their weights in `model.onnx.data`
EXTERNAL_DATA_BYTES = 2 * 1024**3 - 64 * 1024**2
# dummy sizes for tracing: distinct and > 1, so no axis is specialized to a constant
DUMMY_BATCH, DUMMY_SEQUENCE, DUMMY_PAST = 2, 3, 5


class KVCacheWrapper(nn.Module):
    """`model(input_ids, attention_mask, position_ids, past) -> (logits, *present)` on plain tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past: tuple[torch.Tensor, ...]):
        from transformers import DynamicCache

        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
        out = forward_with_cache(
            self.model, cache, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True
        )
        present = cache_tensors(returned_cache(out))
        return (out.logits, *present)


def dummy_inputs(config: DecoderOnnxConfig, batch: int, seq: int, past: int, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:  # fmt: skip
    """Inputs of one call, named as the graph names them: random tokens, full mask, positions after the past."""
    gen = torch.Generator().manual_seed(seed)
    feeds = {
        "input_ids": torch.randint(0, config.vocab_size, (batch, seq), generator=gen),
        "attention_mask": torch.ones(batch, past + seq, dtype=torch.int64),
        "position_ids": torch.arange(past, past + seq).expand(batch, seq).contiguous(),
    }
    for name in config.past_names:
        feeds[name] = torch.randn(config.kv_shape(batch, past), generator=gen).to(dtype)  # the model's own KV dtype
    return feeds


def wrapper_args(config: DecoderOnnxConfig, feeds: dict[str, torch.Tensor]) -> tuple:
    """`KVCacheWrapper.forward`'s arguments from named inputs."""
    return (feeds["input_ids"], feeds["attention_mask"], feeds["position_ids"], tuple(feeds[n] for n in config.past_names))


def dynamic_shapes(config: DecoderOnnxConfig) -> dict:
    """`torch.export` dynamic shapes built from the config's named axes (past tensors as one tuple)."""
    from torch.export import Dim

    dims: dict[str, Dim] = {}

    def axes(spec: dict[int, str]) -> dict:
        return {axis: dims.setdefault(name, Dim(name, min=0 if name == PAST else 1)) for axis, name in spec.items()}

    inputs = config.inputs
    shapes = {name: axes(inputs[name]) for name in ("input_ids", "attention_mask", "position_ids")}
    shapes["past"] = tuple(axes(inputs[name]) for name in config.past_names)
    return shapes


def export_onnx(model: nn.Module, config: DecoderOnnxConfig, out_dir: Path) -> Path:
    """Write `out_dir/model.onnx` (+ `model.onnx.data` above 2 GiB of weights); returns the model path."""
    wrapper = KVCacheWrapper(model).eval()
    feeds = dummy_inputs(config, DUMMY_BATCH, DUMMY_SEQUENCE, DUMMY_PAST, dtype=next(model.parameters()).dtype)
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(
            wrapper,
            wrapper_args(config, feeds),
            dynamo=True,
            dynamic_shapes=dynamic_shapes(config),
            input_names=list(config.inputs),
            output_names=list(config.outputs),
            opset_version=config.opset,
            optimize=True,
            verbose=False,
        )
    path = out_dir / ONNX_NAME
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    program.save(str(path), external_data=weight_bytes > EXTERNAL_DATA_BYTES)
    return path


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's warnings and INFO logs (optional torchvision ops, graph passes) are not the user's concern."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)
