"""Analytic costs, checked against real models: parameter counts, FLOPs (torch's counter), KV-cache bytes."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import LLAMA2_7B, SMALL_CONFIG
from llamanas_deploy.analytics import GIB, count_params, subnet_stats
from llamanas_deploy.model.families import ModelShape, read_shape
from llamanas_deploy.model.compat import forward_with_cache, returned_cache
from llamanas_deploy.model.supernet import random_subnet_model
from llamanas_deploy.space import load_space
from llamanas_deploy.subnet_config import SubnetConfig

SHAPE_7B = ModelShape.from_config_dict(LLAMA2_7B, "llama2-7b")

VARIANTS = {
    "small": {},
    "gqa-tied": {"hidden_size": 72, "num_attention_heads": 9, "num_key_value_heads": 3, "tie_word_embeddings": True},
    "biases": {"attention_bias": True, "mlp_bias": True},
    "head-dim": {"head_dim": 32, "num_key_value_heads": 2},
}
SUBNET = SubnetConfig(3, (32, 128, 96), (0, 2, 3))


def meta_params(config: dict) -> int:
    """Parameters of transformers' own LlamaForCausalLM for `config`, built without memory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if k != "model_type"}))
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(params=sorted(VARIANTS))
def config_path(request, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(SMALL_CONFIG | VARIANTS[request.param]))
    return path


def test_llama2_7b_full_network():
    stats = subnet_stats(SHAPE_7B, load_space("llama2-7b-paper").largest)
    assert stats.params == 6_738_415_616 == meta_params(LLAMA2_7B)
    assert stats.fp16_bytes == 2 * stats.params
    assert round(stats.fp16_gib, 2) == 12.55 and stats.fp16_gib == stats.fp16_bytes / GIB
    assert stats.kv_cache_bytes_per_token == 2 * 32 * 4096 * 2  # K and V, 32 layers, fp16


def test_llama2_7b_smallest_subnet_matches_transformers():
    smallest = load_space("llama2-7b-paper").smallest
    expected = meta_params(LLAMA2_7B | {"num_hidden_layers": 24, "intermediate_size": 5504})
    assert count_params(SHAPE_7B, smallest)[0] == expected == 3_496_153_088


def test_params_equal_a_real_subnet_model(config_path):
    model = random_subnet_model(config_path, SUBNET)
    assert sum(p.numel() for p in model.parameters()) == count_params(read_shape(config_path), SUBNET)[0]


@torch.no_grad()
def test_decode_flops_equal_torch_flop_counter(config_path):
    model = random_subnet_model(config_path, SUBNET)
    model.set_attn_implementation("eager")  # attention as plain matmuls, which the counter sees
    context = 5
    cache = returned_cache(model(torch.zeros(1, context, dtype=torch.long), use_cache=True))
    with FlopCounterMode(display=False) as counter:
        forward_with_cache(model, cache, input_ids=torch.zeros(1, 1, dtype=torch.long), use_cache=True)
    stats = subnet_stats(read_shape(config_path), SUBNET, prompt_len=8, context_len=context)
    assert stats.decode_flops == counter.get_total_flops()


@torch.no_grad()
def test_prefill_flops_equal_torch_flop_counter_minus_masked_half(config_path):
    model = random_subnet_model(config_path, SUBNET)
    model.set_attn_implementation("eager")
    prompt = 7
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, prompt, dtype=torch.long), use_cache=False)
    counts = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    shape = read_shape(config_path)
    stats = subnet_stats(shape, SUBNET, prompt_len=prompt, context_len=0)
    linear = counts.get("aten.mm", 0) + counts.get("aten.addmm", 0)  # addmm: linear layers with a bias
    assert 2 * stats.matmul_params * prompt == linear
    # eager attention computes every (query, key) pair; the analytics count only the causal ones
    masked_pairs = prompt * prompt - prompt * (prompt + 1) // 2
    attention = SUBNET.num_layers * 4 * shape.q_dim * masked_pairs
    assert stats.prefill_flops == counter.get_total_flops() - attention


@torch.no_grad()
def test_kv_cache_bytes_equal_a_real_cache(config_path):
    model = random_subnet_model(config_path, SUBNET).to(torch.float16)
    tokens = 6
    cache = returned_cache(model(torch.zeros(2, tokens, dtype=torch.long), use_cache=True))
    real = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    stats = subnet_stats(read_shape(config_path), SUBNET)
    assert real == stats.kv_cache_bytes_per_token * tokens * 2


def test_smaller_subnets_cost_less():
    space = load_space("llama2-7b-paper")
    full = subnet_stats(SHAPE_7B, space.largest)
    half = subnet_stats(SHAPE_7B, SubnetConfig(32, (5504,) * 32))
    shallow = subnet_stats(SHAPE_7B, SubnetConfig(24, (11008,) * 24))
    for smaller in (half, shallow):
        assert smaller.params < full.params
        assert smaller.prefill_flops < full.prefill_flops and smaller.decode_flops < full.decode_flops
        assert smaller.decode_bytes_moved < full.decode_bytes_moved
    assert half.kv_cache_bytes_per_token == full.kv_cache_bytes_per_token
    assert shallow.kv_cache_bytes_per_token * 32 == full.kv_cache_bytes_per_token * 24
