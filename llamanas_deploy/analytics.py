"""Analytic cost of a sub-network from the super-network's `config.json` alone.

Counts follow the paper: parameters, and bytes in fp16 (reported in GiB).
FLOPs count a multiply-add as 2; attention score FLOPs are included.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from .model.families import ModelShape
from .subnet_config import SubnetConfig

GIB = 1024**3


@dataclass(frozen=True)
class SubnetStats:
    num_layers: int
    params: int
    matmul_params: int
    fp16_bytes: int
    fp16_gib: float
    prefill_flops: int
    decode_flops: int
    kv_cache_bytes_per_token: int
    decode_bytes_moved: int
    prompt_len: int
    context_len: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def layer_params(shape: ModelShape, intermediate_size: int) -> tuple[int, int]:
    """(all parameters, parameters inside matrix multiplies) of one decoder layer."""
    h, q, kv = shape.hidden_size, shape.q_dim, shape.kv_dim
    attn = h * q + 2 * h * kv + q * h + (q + 2 * kv + h if shape.attention_bias else 0)
    mlp = 3 * h * intermediate_size + (2 * intermediate_size + h if shape.mlp_bias else 0)
    norms = 2 * h
    return attn + mlp + norms, h * q + 2 * h * kv + q * h + 3 * h * intermediate_size


def count_params(shape: ModelShape, subnet: SubnetConfig) -> tuple[int, int]:
    """(parameters, matmul parameters incl. the LM head) of the sub-network."""
    embed = shape.vocab_size * shape.hidden_size
    head = 0 if shape.tie_word_embeddings else embed
    total = embed + head + shape.hidden_size  # final norm
    matmul = embed  # the LM head multiplies by a vocab x hidden matrix, tied or not
    for size in subnet.intermediate_sizes:
        p, m = layer_params(shape, size)
        total += p
        matmul += m
    return total, matmul


def subnet_stats(
    shape: ModelShape,
    subnet: SubnetConfig,
    prompt_len: int = 128,
    context_len: int = 128,
    kv_bytes_per_value: int = 2,
) -> SubnetStats:
    params, matmul = count_params(shape, subnet)
    layers = subnet.num_layers
    attn_width = shape.num_attention_heads * shape.head_dim
    # QK^T and AV: 2 * 2 * attn_width FLOPs per (query, key) pair; causal prefill sees P(P+1)/2 pairs
    prefill_pairs = prompt_len * (prompt_len + 1) // 2
    prefill = 2 * matmul * prompt_len + layers * 4 * attn_width * prefill_pairs
    decode = 2 * matmul + layers * 4 * attn_width * (context_len + 1)
    kv_per_token = 2 * layers * shape.kv_dim * kv_bytes_per_value
    return SubnetStats(
        num_layers=layers,
        params=params,
        matmul_params=matmul,
        fp16_bytes=2 * params,
        fp16_gib=2 * params / GIB,
        prefill_flops=prefill,
        decode_flops=decode,
        kv_cache_bytes_per_token=kv_per_token,
        decode_bytes_moved=2 * matmul + kv_per_token * context_len,
        prompt_len=prompt_len,
        context_len=context_len,
    )


def compare_with_full(shape: ModelShape, space, subnets: Sequence[SubnetConfig], prompt_len: int = 128,
                      context_len: int = 128) -> dict[str, Any]:  # fmt: skip
    """Costs of `subnets` and of the space's full network, with how much smaller each is."""
    full = subnet_stats(shape, space.largest, prompt_len, context_len)
    rows = []
    for cfg in subnets:
        s = subnet_stats(shape, cfg, prompt_len, context_len)
        rows.append({"id": cfg.id, "subnet": cfg.to_dict(), **s.to_dict(), "size_ratio": full.params / s.params})
    return {"space_id": space.id, "full": full.to_dict(), "subnets": rows}


def decode_step_bytes(shape: ModelShape, subnet: SubnetConfig, context_len: int, batch_size: int = 1,
                      bytes_per_value: int = 2) -> int:  # fmt: skip
    """Bytes a decode step must read at least: every matrix once, and each sequence's KV cache of `context_len` tokens.

    `bytes_per_value`: of the weights and the cache (2 for bf16 / fp16, 4 for fp32). This is
    the memory-bandwidth bound of decode: at batch 1 the weights dominate (13.5 GB for LLaMA2-7B).
    """
    _, matmul = count_params(shape, subnet)
    kv_per_token = 2 * subnet.num_layers * shape.kv_dim * bytes_per_value
    return matmul * bytes_per_value + batch_size * kv_per_token * context_len


def bandwidth_fraction(bytes_moved: int, step_ms: float, peak_gb_s: float) -> float:
    """Achieved fraction of the memory bandwidth: `bytes_moved` in `step_ms`, over `peak_gb_s` (1e9 bytes/s)."""
    if not (step_ms > 0 and peak_gb_s > 0):
        raise ValueError(f"step time and peak bandwidth must be > 0, got {step_ms} ms and {peak_gb_s} GB/s")
    return bytes_moved / (step_ms * 1e-3) / (peak_gb_s * 1e9)
