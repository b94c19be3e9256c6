"""Super-network loading, sub-network views and extraction, KV-cache decoding, save/load.

The slicing reference is built independently of the code under test: a deep copy of the
Hugging Face model whose dropped MLP neurons are zeroed and whose dropped layers are removed.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from llamanas_deploy.analytics import count_params
from llamanas_deploy.errors import BadInputError
from llamanas_deploy.model.build import load_model
from llamanas_deploy.model.compat import forward_with_cache, returned_cache
from llamanas_deploy.model.families import read_shape
from llamanas_deploy.model.supernet import SuperNetwork, random_subnet_model
from llamanas_deploy.subnet_config import SubnetConfig

TOL = 1e-5

# (checkpoint fixture, sub-networks): first-L, sliced, and non-first layers ("layers" key)
SMALL_SUBNETS = [
    SubnetConfig(3, (32, 128, 64)),
    SubnetConfig(2, (96, 32)),
    SubnetConfig(2, (32, 128), (1, 3)),
    SubnetConfig(3, (64, 64, 96), (0, 2, 3)),
]
CHECKPOINTS = ["small_checkpoint", "gqa_checkpoint"]


@pytest.fixture(scope="module", params=CHECKPOINTS)
def supernet(request) -> SuperNetwork:
    return SuperNetwork.load(request.getfixturevalue(request.param))


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))


def full_width(supernet: SuperNetwork) -> SubnetConfig:
    layers = supernet.config["num_hidden_layers"]
    return SubnetConfig(layers, (supernet.config["intermediate_size"],) * layers)


def reference(model: nn.Module, subnet: SubnetConfig) -> nn.Module:
    """The super-network with the dropped neurons zeroed and the dropped layers removed."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for index, size in zip(subnet.kept_layers, subnet.intermediate_sizes):
            mlp = ref.model.layers[index].mlp
            mlp.gate_proj.weight[size:] = 0
            mlp.up_proj.weight[size:] = 0
            mlp.down_proj.weight[:, size:] = 0
    ref.model.layers = nn.ModuleList(ref.model.layers[i] for i in subnet.kept_layers)
    ref.config.num_hidden_layers = subnet.num_layers
    return ref


@torch.no_grad()
def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids, use_cache=False).logits


@torch.no_grad()
def decode_with_cache(model: nn.Module, ids: torch.Tensor, prompt_len: int = 4) -> torch.Tensor:
    """Prefill `prompt_len` tokens, then feed the rest one at a time through the KV cache."""
    out = model(ids[:, :prompt_len], use_cache=True)
    steps = [out.logits]
    for t in range(prompt_len, ids.shape[1]):
        out = forward_with_cache(model, returned_cache(out), input_ids=ids[:, t : t + 1], use_cache=True)
        steps.append(out.logits)
    return torch.cat(steps, dim=1)


# ---- loading -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("fixture", CHECKPOINTS)
def test_loader_matches_transformers_bit_for_bit(fixture, dtype, request):
    from transformers import LlamaForCausalLM

    path = request.getfixturevalue(fixture)
    ours = SuperNetwork.load(path, dtype=dtype).model
    theirs = LlamaForCausalLM.from_pretrained(path, dtype=dtype).eval()
    long_prompt = torch.arange(200).remainder(256).unsqueeze(0)  # far positions expose rotary precision
    assert torch.equal(logits(ours, long_prompt), logits(theirs, long_prompt))


def test_sharded_checkpoint_loads(small_checkpoint, tmp_path, tokens):
    from transformers import LlamaForCausalLM

    LlamaForCausalLM.from_pretrained(small_checkpoint).save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    model, _, _ = load_model(tmp_path)
    assert torch.equal(logits(model, tokens), logits(SuperNetwork.load(small_checkpoint).model, tokens))


def test_corrupt_or_mismatched_weights_are_bad_input(small_checkpoint, gqa_checkpoint, tmp_path):
    (tmp_path / "config.json").write_text((small_checkpoint / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(BadInputError, match="model.safetensors: cannot read safetensors weights"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes((gqa_checkpoint / "model.safetensors").read_bytes())
    with pytest.raises(BadInputError, match=r"weights do not match config.json \(missing \['lm_head.weight'\]"):
        load_model(tmp_path)
    config = json.loads((small_checkpoint / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"intermediate_size": 96}))
    (tmp_path / "model.safetensors").write_bytes((small_checkpoint / "model.safetensors").read_bytes())
    with pytest.raises(BadInputError, match=r"has shape \(64, 128\), config.json implies \(64, 96\)"):
        load_model(tmp_path)


def test_gqa_fixture_is_grouped_and_tied(gqa_checkpoint):
    model = SuperNetwork.load(gqa_checkpoint).model
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.out_features * 3 == attn.q_proj.out_features  # 9 heads, 3 KV heads
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


# ---- full width: bit for bit ---------------------------------------------------------------


def test_full_width_extract_equals_supernet_bit_for_bit(supernet, tokens):
    sub = supernet.extract(full_width(supernet))
    assert torch.equal(logits(sub, tokens), logits(supernet.model, tokens))


def test_full_width_activate_equals_supernet_bit_for_bit(supernet, tokens):
    expected = logits(supernet.model, tokens)
    with supernet.activate(full_width(supernet)) as view:
        assert torch.equal(logits(view, tokens), expected)


# ---- sliced sub-networks against the zeroed reference -----------------------------------------


@pytest.mark.parametrize("subnet", SMALL_SUBNETS, ids=lambda s: s.id)
def test_extract_equals_zeroed_reference(supernet, subnet, tokens):
    expected = logits(reference(supernet.model, subnet), tokens)
    got = logits(supernet.extract(subnet), tokens)
    assert torch.allclose(got, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("subnet", SMALL_SUBNETS, ids=lambda s: s.id)
def test_activate_equals_zeroed_reference_and_extract(supernet, subnet, tokens):
    expected = logits(reference(supernet.model, subnet), tokens)
    extracted = logits(supernet.extract(subnet), tokens)
    with supernet.activate(subnet) as view:
        got = logits(view, tokens)
    assert torch.allclose(got, expected, atol=TOL, rtol=0)
    assert torch.allclose(got, extracted, atol=TOL, rtol=0)


def test_extract_shapes_are_really_sliced(supernet):
    subnet = SMALL_SUBNETS[2]
    model = supernet.extract(subnet)
    assert len(model.model.layers) == subnet.num_layers
    for layer, size in zip(model.model.layers, subnet.intermediate_sizes):
        assert layer.mlp.gate_proj.weight.shape[0] == size
        assert layer.mlp.up_proj.weight.shape[0] == size
        assert layer.mlp.down_proj.weight.shape[1] == size
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == list(range(subnet.num_layers))
    shape = read_shape(supernet.source)
    assert sum(p.numel() for p in model.parameters()) == count_params(shape, subnet)[0]


def test_extract_copies_weights(supernet):
    model = supernet.extract(SMALL_SUBNETS[0])
    kept = supernet.model.model.layers[0].self_attn.q_proj.weight
    assert model.model.layers[0].self_attn.q_proj.weight.data_ptr() != kept.data_ptr()


@pytest.mark.parametrize(
    "subnet, message",
    [
        (SubnetConfig(2, (32, 32), (1, 4)), "sub-network keeps layer 4, but the super-network has 4 layers"),
        (SubnetConfig(2, (32, 256)), "layer 1: intermediate size 256 exceeds the super-network's 128"),
    ],
)
def test_subnets_the_supernet_does_not_contain_are_refused(supernet, subnet, message):
    with pytest.raises(BadInputError, match=message):
        supernet.extract(subnet)
    with pytest.raises(BadInputError, match=message):
        with supernet.activate(subnet):
            pass
    assert len(supernet.model.model.layers) == 4


# ---- activate: views, restore, gradients ---------------------------------------------------


def test_activate_restores_the_supernet(supernet, tokens):
    before = logits(supernet.model, tokens)
    digest = supernet.weights_sha256()
    with supernet.activate(SMALL_SUBNETS[2]):
        pass
    with pytest.raises(RuntimeError):
        with supernet.activate(SMALL_SUBNETS[1]):
            raise RuntimeError("boom")
    assert torch.equal(logits(supernet.model, tokens), before)
    assert supernet.weights_sha256() == digest
    assert supernet.model.config.num_hidden_layers == supernet.config["num_hidden_layers"]
    assert [layer.self_attn.layer_idx for layer in supernet.model.model.layers] == list(
        range(supernet.config["num_hidden_layers"])
    )


def test_activate_shares_weights_and_gradients_reach_the_supernet(small_checkpoint, tokens):
    supernet = SuperNetwork.load(small_checkpoint)
    subnet = SubnetConfig(2, (32, 128), (1, 3))
    with supernet.activate(subnet) as view:
        view(tokens, labels=tokens, use_cache=False).loss.backward()
    grad = supernet.model.model.layers[1].mlp.gate_proj.weight.grad
    assert grad is not None and grad[:32].abs().sum() > 0
    assert torch.count_nonzero(grad[32:]) == 0  # dropped neurons get nothing
    assert supernet.model.model.layers[0].mlp.gate_proj.weight.grad is None  # dropped layer


# ---- KV cache --------------------------------------------------------------------------------


@pytest.mark.parametrize("subnet", SMALL_SUBNETS, ids=lambda s: s.id)
def test_kv_cache_decoding_equals_full_forward(supernet, subnet, tokens):
    model = supernet.extract(subnet)
    assert torch.allclose(decode_with_cache(model, tokens), logits(model, tokens), atol=TOL, rtol=0)
    with supernet.activate(subnet) as view:
        assert torch.allclose(decode_with_cache(view, tokens), logits(view, tokens), atol=TOL, rtol=0)


# ---- save -> load ----------------------------------------------------------------------------


@pytest.mark.parametrize("subnet", [SMALL_SUBNETS[1], SMALL_SUBNETS[2]], ids=lambda s: s.id)
def test_save_load_round_trips_exactly(supernet, subnet, tokens, tmp_path, small_space_file):
    from llamanas_deploy.space import load_space

    space = load_space(small_space_file)
    out = supernet.save_subnet(subnet, tmp_path / "sub", space)
    loaded, config, directory = load_model(out)
    extracted = supernet.extract(subnet)
    assert directory == out
    assert loaded.state_dict().keys() == extracted.state_dict().keys()
    for name, tensor in extracted.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert torch.equal(logits(loaded, tokens), logits(extracted, tokens))
    assert config["intermediate_sizes"] == list(subnet.intermediate_sizes)
    assert config["num_hidden_layers"] == subnet.num_layers
    assert config["llamanas"]["kept_layers"] == list(subnet.kept_layers)
    assert config["llamanas"]["subnet_id"] == subnet.id
    assert config["llamanas"]["space_id"] == space.id
    assert config["llamanas"]["super_network"]["num_hidden_layers"] == supernet.config["num_hidden_layers"]
    on_disk = json.loads((out / "config.json").read_text())
    assert on_disk == config


def test_saved_tied_subnet_stays_tied(gqa_checkpoint, tmp_path):
    out = SuperNetwork.load(gqa_checkpoint).save_subnet(SMALL_SUBNETS[0], tmp_path / "sub")
    model, _, _ = load_model(out)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_save_subnet_writes_a_new_directory_whole_or_not_at_all(supernet, tmp_path, monkeypatch):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(BadInputError, match="exists and is not an empty directory") as err:
        supernet.save_subnet(SMALL_SUBNETS[0], tmp_path / "full")
    assert err.value.param == "out" and [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    assert supernet.save_subnet(SMALL_SUBNETS[0], tmp_path / "empty") == tmp_path / "empty"
    assert load_model(tmp_path / "empty")[1]["llamanas"]["subnet_id"] == SMALL_SUBNETS[0].id

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("llamanas_deploy.model.supernet.save_model", fail)
    with pytest.raises(OSError, match="disk full"):
        supernet.save_subnet(SMALL_SUBNETS[0], tmp_path / "never")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "full"]  # no temporary left behind


def test_extract_subnet_takes_a_loaded_supernet_and_reports(supernet, small_space_file, tmp_path):
    from llamanas_deploy.model.supernet import extract_subnet
    from llamanas_deploy.space import load_space

    events = []
    out = extract_subnet(supernet, load_space(small_space_file), "smallest", tmp_path / "sub", events.append)
    assert out == tmp_path / "sub" and "extracting" in events[0].message
    assert load_model(out)[1]["num_hidden_layers"] == load_space(small_space_file).smallest.num_layers


def test_tied_checkpoint_stored_under_the_head_name_loads(gqa_checkpoint, tmp_path, tokens):
    from safetensors.torch import load_file, save_file

    state = load_file(str(gqa_checkpoint / "model.safetensors"))
    state["lm_head.weight"] = state.pop("model.embed_tokens.weight")
    (tmp_path / "config.json").write_text((gqa_checkpoint / "config.json").read_text())
    save_file(state, str(tmp_path / "model.safetensors"))
    model, _, _ = load_model(tmp_path)
    assert torch.equal(logits(model, tokens), logits(SuperNetwork.load(gqa_checkpoint).model, tokens))


def test_weights_sha256_tells_checkpoints_apart(small_checkpoint, gqa_checkpoint):
    a, b = SuperNetwork.load(small_checkpoint), SuperNetwork.load(small_checkpoint)
    assert a.weights_sha256() == b.weights_sha256()
    assert a.weights_sha256() != SuperNetwork.load(gqa_checkpoint).weights_sha256()


# ---- shape-only models -----------------------------------------------------------------------


@pytest.mark.parametrize("fixture", CHECKPOINTS)
def test_random_subnet_model_builds_only_the_subnet(fixture, request):
    path = request.getfixturevalue(fixture)
    subnet = SubnetConfig(2, (32, 96), (0, 3))
    model = random_subnet_model(path / "config.json", subnet, seed=3)
    assert len(model.model.layers) == 2
    assert [layer.mlp.down_proj.in_features for layer in model.model.layers] == [32, 96]
    assert sum(p.numel() for p in model.parameters()) == count_params(read_shape(path), subnet)[0]
    out = logits(model, torch.zeros(1, 3, dtype=torch.long))
    assert out.shape == (1, 3, 256) and torch.isfinite(out).all()


def test_random_subnet_model_is_seeded(small_checkpoint):
    subnet = SMALL_SUBNETS[0]
    a = random_subnet_model(small_checkpoint, subnet, seed=5).state_dict()
    b = random_subnet_model(small_checkpoint, subnet, seed=5).state_dict()
    c = random_subnet_model(small_checkpoint, subnet, seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], c["model.layers.0.mlp.up_proj.weight"])


def test_random_supernet_from_config_alone(small_checkpoint, tokens):
    supernet = SuperNetwork.random(small_checkpoint / "config.json", seed=0)
    assert len(supernet.model.model.layers) == 4
    assert torch.isfinite(logits(supernet.model, tokens)).all()
