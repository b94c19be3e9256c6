"""Preparing a super-network: neuron order, block influence, the `importance` depth policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import make_checkpoint, run_cli, write_byte_tokenizer
from llamanas_deploy.errors import BadInputError
from llamanas_deploy.model.importance import block_influence, calibration_batches, prepare_supernet
from llamanas_deploy.model.supernet import SuperNetwork
from llamanas_deploy.space import load_space, space_from_dict
from llamanas_deploy.subnet_config import SubnetConfig

IDLE_LAYER = 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """4 random layers, layer 2 made a no-op (its attention and MLP outputs are zero)."""
    path = make_checkpoint(tmp_path_factory.mktemp("importance") / "model", seed=3)
    write_byte_tokenizer(path)
    supernet = SuperNetwork.load(path)
    layer = supernet.model.model.layers[IDLE_LAYER]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    from llamanas_deploy.model.build import save_model

    save_model(supernet.model, path)
    return path


@pytest.fixture(scope="module")
def prepared(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "supernet"
    return prepare_supernet(model_dir, out, data="pydoc-heldout", max_tokens=512, seq_len=64)


def test_a_layer_that_changes_nothing_has_no_influence_and_is_dropped_first(model_dir):
    model = SuperNetwork.load(model_dir).model
    influence = block_influence(model, calibration_batches(model_dir, "pydoc-heldout", 256, 64))
    assert len(influence) == 4 and influence[IDLE_LAYER] == pytest.approx(0.0, abs=1e-6)
    assert all(0.0 < v <= 2.0 for i, v in enumerate(influence) if i != IDLE_LAYER)


def test_the_prepared_super_network_computes_the_same_function(model_dir, prepared):
    out, importance = prepared
    ids = torch.arange(40).view(2, 20)
    with torch.no_grad():
        before = SuperNetwork.load(model_dir).model(input_ids=ids).logits
        after = SuperNetwork.load(out).model(input_ids=ids).logits
    assert torch.allclose(before, after, atol=1e-5)
    assert importance.drop_order[0] == IDLE_LAYER and sorted(importance.drop_order) == [0, 1, 2, 3]
    written = json.loads((out / "importance.json").read_text())
    assert written["drop_order"] == list(importance.drop_order)
    assert written["calibration"] == {"data": "pydoc-heldout", "tokens": 512, "seq_len": 64}
    assert (out / "tokenizer.json").is_file()


def test_a_narrower_width_keeps_more_of_the_function_once_neurons_are_ordered(model_dir, prepared):
    ids = calibration_batches(model_dir, "pydoc-heldout", 256, 64)[0]
    half = SubnetConfig(4, (32,) * 4)
    errors = []
    for path in (model_dir, prepared[0]):
        supernet = SuperNetwork.load(path)
        with torch.no_grad():
            full = supernet.model(input_ids=ids).logits
            with supernet.activate(half) as model:
                errors.append((model(input_ids=ids).logits - full).pow(2).mean().item())
    assert errors[1] < 0.8 * errors[0], errors


def _space(order: list[int], policy: str = "importance") -> dict:
    return {
        "schema_version": 1, "name": "imp", "super_network": {"num_hidden_layers": 4, "intermediate_size": 128},
        "depth": {"choices": [2, 3, 4], "policy": policy, "drop_order": order},
        "layer_dims": {"intermediate_sizes": {"choices": [64, 128]}},
    }  # fmt: skip


def test_the_importance_policy_keeps_the_layers_its_order_drops_last():
    space = space_from_dict(_space([2, 0, 3, 1]), "space.json")
    assert space.kept_layers(4) == (0, 1, 2, 3)
    assert space.kept_layers(3) == (0, 1, 3)
    assert space.kept_layers(2) == (1, 3)
    subnet = SubnetConfig(2, (64, 128), (1, 3))
    assert space.decode(space.encode(subnet)) == subnet.canonical()
    assert space.smallest.kept_layers == (1, 3)
    assert space_from_dict(space.to_dict(), "again").id == space.id
    assert space_from_dict(_space([0, 2, 3, 1]), "other").id != space.id  # the order is part of the space


@pytest.mark.parametrize(
    "order, policy, message",
    [
        ([0, 1, 2], "importance", "every layer index 0..3 once"),
        ([0, 1, 2, 2], "importance", "every layer index 0..3 once"),
        ([0, 1, "2", 3], "importance", "every layer index 0..3 once"),
        (None, "importance", "every layer index 0..3 once"),
        ([0, 1, 2, 3], "first", "depth.drop_order is for the 'importance' policy"),
    ],
)
def test_a_malformed_drop_order_is_refused_naming_the_file(order, policy, message):
    data = _space(order, policy)
    if order is None:
        del data["depth"]["drop_order"]
    with pytest.raises(BadInputError, match=message) as err:
        space_from_dict(data, "space.json")
    assert str(err.value).startswith("space.json: ")


def test_a_space_whose_order_was_measured_on_another_model_is_refused(model_dir, prepared, tmp_path):
    out, importance = prepared
    order = list(importance.drop_order)
    ours = space_from_dict(_space(order), "ours")
    SuperNetwork.load(out).check_space(ours)
    with pytest.raises(BadInputError, match="is not space imp's"):
        SuperNetwork.load(out).check_space(space_from_dict(_space(order[::-1]), "theirs"))
    with pytest.raises(BadInputError, match="no importance.json"):
        SuperNetwork.load(model_dir).check_space(ours)


def test_the_shipped_smollm2_space_drops_layers_by_importance():
    space = load_space("smollm2-135m")
    assert space.layer_policy == "importance" and space.depth_choices == (22, 26, 30)
    assert 0 in space.kept_layers(22) and 29 in space.kept_layers(22)  # the first and last layers matter most


def test_prepare_command(model_dir, tmp_path, capsys):
    out = tmp_path / "prepared"
    code, stdout, err = run_cli(capsys, "prepare", "--model", str(model_dir), "--out", str(out), "--data", "pydoc-heldout",
                                "--max-tokens", "256", "--seq-len", "64", "--quiet", "--json")  # fmt: skip
    assert code == 0, err
    assert json.loads(stdout)["drop_order"][0] == IDLE_LAYER
    code, stdout, err = run_cli(capsys, "prepare", "--model", str(model_dir), "--out", str(out), "--quiet")
    assert code == 2 and err.count("\n") == 1 and "prepared" in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "prepare", "--out", str(tmp_path / "x"))
    assert code == 2 and "--model" in err
