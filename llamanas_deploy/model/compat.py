"""The one place that knows which transformers 5.x this is.

A late 5.x release renamed a causal LM's cache argument and output field from
`past_key_values` to `cache`; earlier 5.x releases (5.17, the stock package of a CUDA
PyTorch image, among them) have only `past_key_values`. Every call with a cache goes
through `forward_with_cache` and reads the returned cache with `returned_cache`, so one
code base runs on every transformers release that setup.cfg admits.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

NEW_NAME, OLD_NAME = "cache", "past_key_values"


def cache_keyword(model: Any) -> str:
    """The name under which `model`'s `forward` takes its KV cache."""
    module = getattr(model, "_orig_mod", model)  # a torch.compile'd module: ask the original
    return _keyword_of(type(module))


@functools.lru_cache(maxsize=None)
def _keyword_of(cls: type) -> str:
    parameters = inspect.signature(cls.forward).parameters
    return NEW_NAME if NEW_NAME in parameters else OLD_NAME


def forward_with_cache(model: Any, cache: Any, **inputs: Any) -> Any:
    """`model(**inputs)` with `cache` passed under the name this transformers uses."""
    return model(**inputs, **{cache_keyword(model): cache})


def returned_cache(output: Any) -> Any:
    """The KV cache a forward returned (`output.cache` or `output.past_key_values`)."""
    for name in (NEW_NAME, OLD_NAME):
        value = getattr(output, name, None)
        if value is not None:
            return value
    raise AttributeError(f"{type(output).__name__} carries no KV cache (neither .{NEW_NAME} nor .{OLD_NAME})")


def cache_tensors(cache: Any) -> list:
    """[key_0, value_0, key_1, value_1, ...] of a transformers cache, layer by layer."""
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]
