"""Shared fixtures: small random-weight LLaMA checkpoints and their search spaces.

Real components throughout: these are genuine `LlamaForCausalLM` checkpoints in safetensors,
only small enough to run in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llamanas_deploy.cli import main

SMALL_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
}

LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "intermediate_size": 11008,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `llamanas ARGS` in-process through `main`, as the console script does."""
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out, err = capsys.readouterr()
    return done.value.code, out, err


SMALL_SPACE = {
    "schema_version": 1,
    "name": "small-test",
    "super_network": {"num_hidden_layers": 4, "intermediate_size": 128},
    "depth": {"choices": [2, 3, 4], "policy": "first"},
    "layer_dims": {"intermediate_sizes": {"choices": [32, 64, 96, 128], "policy": "first"}},
}


def make_checkpoint(path: Path, seed: int = 0, **overrides) -> Path:
    """Write a random-weight LLaMA checkpoint (config.json + model.safetensors) to `path`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**{k: v for k, v in (SMALL_CONFIG | overrides).items() if k != "model_type"})
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    return path


def write_space(path: Path, **overrides) -> Path:
    path.write_text(json.dumps(SMALL_SPACE | overrides))
    return path


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """4 layers, hidden 64, MLP 128, untied embeddings."""
    return make_checkpoint(tmp_path_factory.mktemp("small") / "model")


@pytest.fixture(scope="session")
def gqa_checkpoint(tmp_path_factory) -> Path:
    """Grouped-query attention (9 heads, 3 KV heads) with tied embeddings."""
    return make_checkpoint(
        tmp_path_factory.mktemp("gqa") / "model",
        seed=1,
        hidden_size=72,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    )


@pytest.fixture(scope="session")
def small_space_file(tmp_path_factory) -> Path:
    return write_space(tmp_path_factory.mktemp("space") / "small-test.json")


def write_byte_tokenizer(model_dir: Path) -> None:
    """A byte-level tokenizer whose 256 tokens fill the test model's vocabulary exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.save(str(model_dir / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": False, "model_max_length": 256}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
