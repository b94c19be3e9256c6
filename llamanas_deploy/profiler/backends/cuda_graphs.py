"""Decode as a deployed GPU server runs it: CUDA graphs replayed over a static KV cache.

Eager decode of a 7B model at batch 1 is bound by kernel launches (Python, then ~10 kernels
per layer), not by memory bandwidth: its time follows the layer count and hides the MLP
width. A CUDA graph replays the whole step's kernels with one launch, so the time is the
GPU's own: for a 7B model at batch 1, close to the weight bytes over the memory bandwidth.

A graph replays fixed addresses, so everything a step reads or writes is preallocated:
- `StaticKVCache`: keys and values of `length` positions per layer; the step writes its
  new entries at `position`, a tensor on the device (no host read anywhere in a step);
- the attention mask is a 4-D boolean tensor (`True` = attend) that transformers uses as
  given, so its own mask code (which reads tensor values on the host) never runs;
- inputs (`input_ids`, `position_ids`) are tensors updated in place between replays.

Every transformers 5.x calls `cache.update(keys, values, layer_idx, ...)` in each attention
layer and asks nothing else of a cache that is given 4-D masks and explicit positions, so
`StaticKVCache` is duck-typed rather than a subclass of its (changing) `Cache` classes.
`decode_step` is also what the CPU tests check against transformers' own cache, and what
runs on the meta device to show that a step never reads a value on the host.
"""

from __future__ import annotations

from typing import Callable

import torch

from ...model.compat import forward_with_cache

CAPTURE_WARMUP = 2  # eager runs of a step on a side stream before it is captured


class StaticKVCache:
    """Preallocated keys / values [batch, kv_heads, length, head_dim] per layer, written at `position`."""

    def __init__(self, config, batch: int, length: int, dtype: torch.dtype, device: torch.device | str):
        heads = config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (batch, heads, length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # where the next token's entries go
        self.seen = 0  # the same, on the host, for transformers releases that ask (`get_seq_length`)

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        index = self.position + torch.arange(key_states.shape[2], device=key_states.device)
        self.keys[layer_idx].index_copy_(2, index, key_states)
        self.values[layer_idx].index_copy_(2, index, value_states)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def set_position(self, position: int) -> None:
        self.position.fill_(position)
        self.seen = position


def causal_mask(batch: int, queries: int, start: int, length: int, device) -> torch.Tensor:
    """[batch, 1, queries, length] booleans: query i (at position start + i) sees positions <= start + i."""
    q = torch.arange(start, start + queries, device=device)[:, None]
    k = torch.arange(length, device=device)[None, :]
    return (k <= q).expand(batch, 1, queries, length).contiguous()


def decode_step(net, cache: StaticKVCache, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor):
    """One forward through the static cache (logits of the last position only)."""
    out = forward_with_cache(
        net, cache, input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1
    )
    return out.logits


def prefill(net, cache: StaticKVCache, ids: torch.Tensor) -> torch.Tensor:
    """Write the prompt `ids` [batch, length] into `cache` from position 0; returns the last logits."""
    batch, length = ids.shape
    cache.set_position(0)
    positions = torch.arange(length, device=ids.device).expand(batch, length)
    mask = causal_mask(batch, length, 0, cache.keys[0].shape[2], ids.device)
    logits = decode_step(net, cache, ids, positions, mask)
    cache.set_position(length)
    return logits


def capture(step: Callable[[], object], warmup: int = CAPTURE_WARMUP):
    """A `torch.cuda.CUDAGraph` of `step` (warmed up on a side stream first, as capture requires)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


class GraphDecoder:
    """Decode steps of one sub-network as CUDA graphs (`fixed_context`: the decode figure; `generation`)."""

    def __init__(self, net, vocab_size: int, seed: int):
        self.net, self.vocab_size, self.seed = net, vocab_size, seed
        self.graphs: list = []  # kept alive while their workloads are measured; dropped on unload

    def _tokens(self, batch: int, length: int, device) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randint(0, self.vocab_size, (batch, length), generator=gen).to(device)

    def _cache(self, batch: int, length: int, device) -> StaticKVCache:
        dtype = next(self.net.parameters()).dtype
        return StaticKVCache(self.net.config, batch, length, dtype, device)

    @torch.inference_mode()
    def fixed_context(self, batch: int, context: int, device) -> Callable[[], None]:
        """One token against exactly `context` cached tokens: every replay rewrites the same slot."""
        cache = self._cache(batch, context + 1, device)
        prefill(self.net, cache, self._tokens(batch, context, device))
        ids = self._tokens(batch, 1, device)
        positions = torch.full((batch, 1), context, dtype=torch.long, device=device)
        mask = torch.ones(batch, 1, 1, context + 1, dtype=torch.bool, device=device)
        graph = capture(lambda: decode_step(self.net, cache, ids, positions, mask))
        self.graphs.append(graph)
        return graph.replay

    @torch.inference_mode()
    def generation(self, batch: int, prompt_len: int, gen_len: int, device) -> Callable[[], None]:
        """Greedy generation: the prompt (eager), then `gen_len - 1` graph replays, each feeding its argmax back."""
        length = prompt_len + max(gen_len, CAPTURE_WARMUP + 1)  # the warm-up steps before capture write too
        cache = self._cache(batch, length, device)
        prompt = self._tokens(batch, prompt_len, device)
        ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        positions = torch.zeros(batch, 1, dtype=torch.long, device=device)
        mask = torch.zeros(batch, 1, 1, length, dtype=torch.bool, device=device)

        def step() -> None:  # all on the device: the replay needs nothing from the host
            mask.index_fill_(3, cache.position, True)
            logits = decode_step(self.net, cache, ids, positions, mask)
            ids.copy_(logits[:, -1:].argmax(dim=-1))
            cache.position.add_(1)
            positions.add_(1)

        def start() -> None:
            logits = prefill(self.net, cache, prompt)
            ids.copy_(logits[:, -1:].argmax(dim=-1))
            positions.fill_(prompt_len)
            mask.zero_()
            mask[..., :prompt_len] = True

        start()
        graph = capture(step)
        self.graphs.append(graph)

        @torch.inference_mode()
        def run() -> None:
            start()
            for _ in range(gen_len - 1):
                graph.replay()

        return run
