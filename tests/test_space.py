"""Search spaces: the paper's numbers, validation messages, pymoo encoding, seeded sampling, space files."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import SMALL_SPACE
from llamanas_deploy.errors import BadInputError
from llamanas_deploy.space import builtin_spaces, load_space, space_from_dict
from llamanas_deploy.subnet_config import SubnetConfig

PAPER = load_space("llama2-7b-paper")
TINY = load_space("tiny")
SMALL = space_from_dict(SMALL_SPACE, "small")
UNIFORM = space_from_dict(SMALL_SPACE | {"name": "uniform", "depth": {"choices": [1, 2, 3, 4], "policy": "uniform"}}, "u")
SPACES = [PAPER, TINY, SMALL, UNIFORM]


def subnets_of(space):
    """Hypothesis strategy: any sub-network of `space` that its layer policy can encode."""

    @st.composite
    def draw(draw_fn):
        depth = draw_fn(st.sampled_from(space.depth_choices))
        widths = draw_fn(st.lists(st.sampled_from(space.dim("intermediate_sizes").choices), min_size=depth, max_size=depth))
        return SubnetConfig(depth, tuple(widths), space.kept_layers(depth)).canonical()

    return draw()


# ---- the paper's space ---------------------------------------------------------------------


def test_builtins_exist():
    assert {"tiny", "llama2-7b-paper"} <= set(builtin_spaces())


def test_paper_space_is_exactly_the_papers():
    assert PAPER.num_points == 12_884_901_888 == 3 * 2**32
    assert PAPER.depth_choices == (24, 28, 32)
    assert PAPER.dim("intermediate_sizes").choices == (5504, 11008)
    assert (PAPER.max_layers, PAPER.max_intermediate_size) == (32, 11008)
    assert PAPER.layer_policy == "first" and PAPER.dim("intermediate_sizes").policy == "first"
    assert PAPER.smallest == SubnetConfig(24, (5504,) * 24)
    assert PAPER.largest == SubnetConfig(32, (11008,) * 32)


def test_builtin_ids_are_stable():
    # other stages (profiles, predictors) record these ids: changing a built-in must be deliberate
    assert TINY.id == "tiny-1525d338"
    assert PAPER.id.startswith("llama2-7b-paper-") and len(PAPER.id) == len("llama2-7b-paper-") + 8


def test_id_covers_content_but_not_description():
    same = space_from_dict(SMALL_SPACE | {"description": "other words"}, "x")
    wider = space_from_dict(SMALL_SPACE | {"depth": {"choices": [2, 4]}}, "x")
    assert same.id == SMALL.id
    assert wider.id != SMALL.id


def test_num_distinct_counts_every_decodable_subnet():
    bounds = SMALL.encoding_upper_bounds
    ids = {SMALL.decode(np.array(g)).id for g in itertools.product(*(range(b + 1) for b in bounds))}
    assert len(ids) == SMALL.num_distinct == 4**2 + 4**3 + 4**4


# ---- validation ------------------------------------------------------------------------------


def test_size_outside_the_space_names_the_layer():
    sizes = [11008] * 32
    sizes[7] = 6000
    with pytest.raises(BadInputError) as err:
        PAPER.validate(SubnetConfig(32, tuple(sizes)), "cfg.json")
    assert str(err.value) == "cfg.json: layer 7: intermediate size 6000 is not in {5504, 11008}"


def test_depth_outside_the_space():
    with pytest.raises(BadInputError, match=r"cfg: num_layers 30 is not in \{24, 28, 32\}"):
        PAPER.validate(SubnetConfig(30, (5504,) * 30), "cfg")


def test_layer_index_outside_the_supernet():
    with pytest.raises(BadInputError, match="layer index 4 is out of range: the super-network has 4 layers"):
        SMALL.validate(SubnetConfig(2, (32, 32), (1, 4)))


def test_validate_returns_the_canonical_form():
    assert SMALL.validate(SubnetConfig(2, (32, 64), (0, 1))) == SubnetConfig(2, (32, 64))


def test_a_config_without_layers_keeps_the_spaces_layers():
    """In a space that drops layers by importance, `{"num_layers": 26, ...}` is its 26 layers, not the first 26."""
    smollm2 = load_space("smollm2-135m")
    written = '{"num_layers": 26, "intermediate_sizes": [%s]}' % ", ".join(["1152"] * 26)
    cfg = smollm2.resolve(written)
    assert cfg.kept_layers == smollm2.kept_layers(26) != tuple(range(26))
    assert not {25, 14, 26, 13} & set(cfg.kept_layers)  # the four least important go first
    assert smollm2.resolve(cfg.to_json()) == cfg and smollm2.encode(cfg) is not None
    assert smollm2.resolve("largest").layers is None  # all 30: the first 30
    assert UNIFORM.validate(SubnetConfig(2, (32, 32))).kept_layers == (0, 3)


# ---- encoding ----------------------------------------------------------------------------------


@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_encode_decode_round_trip(space, data):
    cfg = data.draw(subnets_of(space))
    genes = space.encode(cfg)
    assert genes.shape == space.encoding_upper_bounds.shape
    assert ((genes >= 0) & (genes <= space.encoding_upper_bounds)).all()
    assert space.decode(genes) == cfg
    assert space.decode(genes.astype(float) + 0.3) == cfg  # pymoo hands over floats


@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_gene_vector_decodes_to_a_valid_subnet(space, data):
    bounds = space.encoding_upper_bounds
    genes = np.array([data.draw(st.integers(-2, int(b) + 2)) for b in bounds])
    cfg = space.decode(genes)
    assert space.validate(cfg) == cfg
    assert space.decode(space.encode(cfg)) == cfg


def test_decode_rejects_the_wrong_length():
    with pytest.raises(BadInputError, match=r"encoding has shape \(3,\), expected \(33,\)"):
        PAPER.decode(np.zeros(3))


def test_encode_refuses_layers_the_policy_cannot_express():
    with pytest.raises(BadInputError, match="keeps layers \\[1, 3\\], which the 'first' layer policy"):
        SMALL.encode(SubnetConfig(2, (32, 32), (1, 3)))


def test_uniform_policy_keeps_first_and_last_evenly():
    assert UNIFORM.kept_layers(4) == (0, 1, 2, 3)
    assert UNIFORM.kept_layers(2) == (0, 3)
    assert UNIFORM.kept_layers(1) == (0,)
    assert TINY.kept_layers(5) == (0, 1, 2, 3, 4)
    big = space_from_dict(PAPER.to_dict() | {"depth": {"choices": [24, 28, 32], "policy": "uniform"}}, "x")
    for depth in big.depth_choices:
        kept = big.kept_layers(depth)
        assert len(set(kept)) == depth and list(kept) == sorted(kept) and kept[0] == 0 and kept[-1] == 31


# ---- sampling -------------------------------------------------------------------------------------


@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
def test_stratified_sample(space):
    sample = space.sample_stratified(40, seed=3)
    assert len(sample) == 40 == len({c.id for c in sample})
    assert sample[0] == space.smallest and sample[1] == space.largest
    assert {c.num_layers for c in sample} == set(space.depth_choices)
    assert all(space.validate(c) == c for c in sample)
    assert sample == space.sample_stratified(40, seed=3)  # deterministic
    assert sample[:15] == space.sample_stratified(15, seed=3)  # prefix of a larger sample
    assert sample != space.sample_stratified(40, seed=4)


def test_stratified_sample_spreads_over_widths():
    sample = PAPER.sample_stratified(50, seed=0)
    fractions = [sum(s == 11008 for s in c.intermediate_sizes) / c.num_layers for c in sample]
    assert min(fractions) == 0 and max(fractions) == 1
    assert sum(f < 0.5 for f in fractions) >= 15 and sum(f > 0.5 for f in fractions) >= 15


def test_stratified_sample_mixes_far_apart_widths_in_one_subnet():
    sample = TINY.sample_stratified(100, seed=0)
    assert any({192, 768} <= set(c.intermediate_sizes) for c in sample)


@pytest.mark.parametrize("space", SPACES, ids=lambda s: s.name)
def test_random_sample(space):
    sample = space.sample_random(30, seed=1)
    assert len({c.id for c in sample}) == 30
    assert all(space.validate(c) == c for c in sample)
    assert sample == space.sample_random(30, seed=1)
    assert sample != space.sample_random(30, seed=2)


def test_sampling_more_than_the_space_returns_all_of_it():
    tiny_space = space_from_dict(SMALL_SPACE | {"depth": {"choices": [1, 2]}}, "x")  # 4 + 16 sub-networks
    assert len(tiny_space.sample_stratified(1000)) == tiny_space.num_distinct == 20
    assert len(tiny_space.sample_random(1000)) == 20


# ---- space files -------------------------------------------------------------------------------------


def test_to_dict_round_trips(tmp_path):
    for space in SPACES:
        path = tmp_path / f"{space.name}.json"
        path.write_text(json.dumps(space.to_dict()))
        assert load_space(path) == space


@pytest.mark.parametrize(
    "change, message",
    [
        ({"extra": 1}, "unknown key(s) ['extra']"),
        ({"schema_version": 9}, "schema_version 9 is not supported"),
        ({"super_network": [4, 128]}, "super_network must be an object"),
        ({"super_network": {"num_hidden_layers": "4", "intermediate_size": 128}}, "num_hidden_layers must be a positive"),
        ({"depth": {"choices": []}}, "depth.choices must be a non-empty list of positive integers"),
        ({"depth": {"choices": [2, 2]}}, "depth.choices has duplicates"),
        ({"depth": {"choices": [2, 6]}}, "depth choice 6 exceeds the super-network's 4 layers"),
        ({"depth": {"choices": [2], "policy": "last"}}, "depth.policy 'last' is not one of"),
        ({"depth": [2, 3]}, "depth must be an object with ['choices']"),
        ({"layer_dims": {"heads": {"choices": [2]}}}, "at least 'intermediate_sizes'"),
        ({"layer_dims": {"intermediate_sizes": {"choices": [32, 256]}}}, "intermediate size 256 exceeds"),
        ({"layer_dims": {"intermediate_sizes": {"choices": [32], "policy": "random"}}}, "policy 'random' is not one"),
        ({"name": ""}, "name must be a non-empty string"),
    ],
)
def test_malformed_space_files_name_the_file_and_field(tmp_path, change, message):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(SMALL_SPACE | change))
    with pytest.raises(BadInputError) as err:
        load_space(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)


def test_unsupported_dimension_is_named(tmp_path):
    dims = {"intermediate_sizes": {"choices": [32]}, "num_heads": {"choices": [2, 4]}}
    with pytest.raises(BadInputError, match="elastic dimension 'num_heads' is not supported"):
        space_from_dict(SMALL_SPACE | {"layer_dims": dims}, "x")


def test_unknown_space_and_broken_json(tmp_path):
    with pytest.raises(BadInputError, match="no such built-in space .*tiny.*and no such file"):
        load_space("nope")
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(BadInputError, match="broken.json: not valid JSON"):
        load_space(path)


def test_check_super_network_refuses_a_mismatch():
    class Config:
        num_hidden_layers, intermediate_size = 4, 256

    with pytest.raises(BadInputError, match="model: super-network has 4 layers and intermediate size 256"):
        SMALL.check_super_network(Config(), "model")
    Config.intermediate_size = 128
    SMALL.check_super_network(Config(), "model")
