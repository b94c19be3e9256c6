"""The sub-network config record: parsing, canonical form, stable ids, the `--subnet` argument forms."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamanas_deploy.errors import BadInputError
from llamanas_deploy.subnet_config import SubnetConfig, read_subnet_arg, read_subnets, unique


def test_first_layers_and_explicit_first_layers_are_the_same_subnet():
    plain = SubnetConfig(3, (32, 64, 128))
    explicit = SubnetConfig.from_dict({"num_layers": 3, "intermediate_sizes": [32, 64, 128], "layers": [0, 1, 2]})
    assert explicit.canonical() == plain
    assert explicit.id == plain.id
    assert explicit.to_dict() == {"num_layers": 3, "intermediate_sizes": [32, 64, 128]}


def test_id_is_stable_and_distinguishes_subnets():
    cfg = SubnetConfig(2, (32, 64))
    assert cfg.id == SubnetConfig.from_json(cfg.to_json()).id
    assert len(cfg.id) == 12 and int(cfg.id, 16) >= 0
    assert cfg.id != SubnetConfig(2, (64, 32)).id
    assert cfg.id != SubnetConfig(2, (32, 64), (1, 3)).id


def test_json_round_trip_keeps_layers():
    cfg = SubnetConfig(2, (32, 64), (1, 3))
    back = SubnetConfig.from_json(cfg.to_json())
    assert back == cfg and back.kept_layers == (1, 3)


@pytest.mark.parametrize(
    "data, message",
    [
        ([1, 2], "expected a JSON object, got list"),
        ({"num_layers": 1, "intermediate_sizes": [1], "width": 3}, "unknown key(s) ['width']"),
        ({"intermediate_sizes": [1]}, "missing key 'num_layers'"),
        ({"num_layers": 2}, "missing key 'intermediate_sizes'"),
        ({"num_layers": 0, "intermediate_sizes": []}, "num_layers must be a positive integer, got 0"),
        ({"num_layers": True, "intermediate_sizes": [1]}, "num_layers must be a positive integer, got True"),
        ({"num_layers": 2, "intermediate_sizes": [1, "2"]}, "intermediate_sizes must be a list of integers"),
        ({"num_layers": 2, "intermediate_sizes": [1]}, "intermediate_sizes has 1 entries, expected num_layers = 2"),
        ({"num_layers": 2, "intermediate_sizes": [1, 2], "layers": [0]}, "layers has 1 entries, expected"),
        ({"num_layers": 2, "intermediate_sizes": [1, 2], "layers": [3, 1]}, "distinct, increasing and >= 0"),
        ({"num_layers": 2, "intermediate_sizes": [1, 2], "layers": [1, 1]}, "distinct, increasing and >= 0"),
        ({"num_layers": 2, "intermediate_sizes": [1, 2], "layers": [-1, 1]}, "distinct, increasing and >= 0"),
    ],
)
def test_bad_configs_are_rejected_with_the_source_named(data, message):
    with pytest.raises(BadInputError) as err:
        SubnetConfig.from_dict(data, "cfg.json")
    assert str(err.value).startswith("cfg.json: ")
    assert message in str(err.value)


def test_malformed_json_names_the_file_and_position(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"num_layers": 2,\n "intermediate_sizes": [1, 2]')
    with pytest.raises(BadInputError, match=r"bad\.json: not valid JSON .* at line 2 column"):
        SubnetConfig.from_file(path)


def test_missing_and_binary_files_are_bad_input(tmp_path):
    with pytest.raises(BadInputError, match="cannot read sub-network config"):
        SubnetConfig.from_file(tmp_path / "nope.json")
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(BadInputError, match="not a UTF-8 text file"):
        read_subnets(binary)


def test_read_subnets_reads_one_object_or_json_lines(tmp_path):
    one = tmp_path / "one.json"
    one.write_text(json.dumps({"num_layers": 1, "intermediate_sizes": [8]}, indent=2))
    assert read_subnets(one) == [SubnetConfig(1, (8,))]
    many = tmp_path / "many.jsonl"
    many.write_text('{"num_layers": 1, "intermediate_sizes": [8]}\n\n{"num_layers": 2, "intermediate_sizes": [8, 4]}\n')
    assert read_subnets(many) == [SubnetConfig(1, (8,)), SubnetConfig(2, (8, 4))]


def test_read_subnets_names_the_line_of_a_bad_entry(tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text('{"num_layers": 1, "intermediate_sizes": [8]}\n\n{"num_layers": 2, "intermediate_sizes": [8]}\n')
    with pytest.raises(BadInputError, match=r"many\.jsonl:3: intermediate_sizes has 1 entries"):
        read_subnets(path)


def test_subnet_arg_inline_file_and_front_index(tmp_path):
    cfg = SubnetConfig(2, (8, 4), (0, 2))
    assert read_subnet_arg(cfg.to_json()) == cfg
    file = tmp_path / "cfg.json"
    file.write_text(cfg.to_json())
    assert read_subnet_arg(str(file)) == cfg
    front = tmp_path / "front.json"
    entries = [{"subnet": SubnetConfig(1, (8,)).to_dict(), "subnet_id": "x"}, {"subnet": cfg.to_dict()}]
    front.write_text(json.dumps({"schema_version": 1, "front": entries}))
    assert read_subnet_arg(f"{front}#1") == cfg
    plain_list = tmp_path / "list.json"
    plain_list.write_text(json.dumps([cfg.to_dict()]))
    assert read_subnet_arg(f"{plain_list}#0") == cfg


@pytest.mark.parametrize(
    "suffix, message",
    [("#5", "index 5 is out of range: the front has 1 entries"), ("#x", "must be an index into the front")],
)
def test_bad_front_index(tmp_path, suffix, message):
    front = tmp_path / "front.json"
    front.write_text(json.dumps({"front": [{"subnet": {"num_layers": 1, "intermediate_sizes": [8]}}]}))
    with pytest.raises(BadInputError, match=message):
        read_subnet_arg(f"{front}{suffix}")


def test_unique_keeps_first_occurrence_in_canonical_form():
    a, b = SubnetConfig(2, (8, 4), (0, 1)), SubnetConfig(1, (8,))
    assert unique([a, b, SubnetConfig(2, (8, 4)), b]) == [a.canonical(), b]


@st.composite
def subnet_configs(draw) -> SubnetConfig:
    depth = draw(st.integers(1, 40))
    sizes = tuple(draw(st.lists(st.integers(1, 20_000), min_size=depth, max_size=depth)))
    layers = draw(st.none() | st.sets(st.integers(0, 63), min_size=depth, max_size=depth).map(sorted).map(tuple))
    return SubnetConfig(depth, sizes, layers)


@given(subnet_configs())
def test_json_round_trip_and_id_for_random_configs(cfg):
    back = SubnetConfig.from_json(cfg.to_json())
    assert back == cfg.canonical() and back.kept_layers == cfg.kept_layers
    assert back.id == cfg.id
    assert json.loads(cfg.to_json()) == cfg.to_dict()
