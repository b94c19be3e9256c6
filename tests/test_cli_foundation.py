"""The foundation commands through the real CLI entry point: results, and bad inputs -> exit 2, one line."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import click
import pytest

from conftest import LLAMA2_7B, SMALL_CONFIG, run_cli
from llamanas_deploy.cli import cli, options, registry_options
from llamanas_deploy.model.build import load_model
from llamanas_deploy.model.supernet import SuperNetwork
from llamanas_deploy.subnet_config import SubnetConfig

DEPRECATED = "warning: {old} is deprecated and goes in the next release; use {new}\n"


def assert_bad_input(result: tuple[int, str, str], *fragments: str) -> None:
    code, out, err = result
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, f"expected one line on stderr, got {err!r}"
    assert err.startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err
    assert out == ""


def write(path: Path, content) -> str:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def small_config_dir(tmp_path: Path) -> Path:
    """A model directory holding only the small fixture's config.json (no weights)."""
    directory = tmp_path / "small"
    directory.mkdir()
    write(directory / "config.json", SMALL_CONFIG)
    return directory


@pytest.fixture
def config_7b(tmp_path) -> str:
    return write(tmp_path / "config.json", LLAMA2_7B)


# ---- results ---------------------------------------------------------------------------------


def test_space_show_json_reports_the_papers_points(capsys):
    code, out, _ = run_cli(capsys, "space", "show", "llama2-7b-paper", "--json")
    result = json.loads(out)
    assert code == 0 and result["num_points"] == 12_884_901_888
    assert result["depth"]["choices"] == [24, 28, 32]
    assert result["id"].startswith("llama2-7b-paper-")


def test_space_show_text(capsys):
    code, out, _ = run_cli(capsys, "space", "show", "tiny")
    assert code == 0 and "points: 327,680" in out


def test_space_show_a_70b_space_in_text_and_exactly_in_json(capsys, tmp_path):
    space = {"schema_version": 1, "name": "wide", "super_network": {"num_hidden_layers": 80, "intermediate_size": 28672},
             "depth": {"choices": [60, 70, 80]}, "layer_dims": {"intermediate_sizes": {"choices": [7168, 14336, 28672]}}}
    path = write(tmp_path / "wide.json", space)
    code, out, _ = run_cli(capsys, "space", "show", path)
    assert code == 0 and "points: 4.434e+38 " in out  # 3 x 3^80, not 39 digits with commas
    code, out, _ = run_cli(capsys, "space", "show", path, "--json")
    assert code == 0 and json.loads(out)["num_points"] == 3 * 3**80


def test_space_sample_prints_json_lines_other_commands_read(capsys, tmp_path, small_space_file):
    code, out, _ = run_cli(capsys, "space", "sample", str(small_space_file), "-n", "6", "--seed", "2")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 6
    configs = [SubnetConfig.from_json(line) for line in lines]
    assert configs[0].num_layers == 2 and configs[1] == SubnetConfig(4, (128,) * 4)
    assert run_cli(capsys, "space", "sample", str(small_space_file), "-n", "6", "--seed", "2")[1] == out
    subnets = write(tmp_path / "s.jsonl", out)
    code, out, _ = run_cli(capsys, "subnet", "stats", "--model", str(small_config_dir(tmp_path)), "--space",
                       str(small_space_file), "--subnet", subnets, "--json")
    assert code == 0 and [row["id"] for row in json.loads(out)["subnets"]] == [c.id for c in configs]


def test_subnet_stats_on_a_7b_config(capsys, tmp_path, config_7b):
    subnet = write(tmp_path / "full.json", {"num_layers": 32, "intermediate_sizes": [11008] * 32})
    code, out, _ = run_cli(capsys, "subnet", "stats", "--model", config_7b, "--space", "llama2-7b-paper",
                       "--subnet", subnet, "--json")
    result = json.loads(out)
    assert code == 0
    assert result["full"]["params"] == 6_738_415_616
    assert round(result["full"]["fp16_gib"], 2) == 12.55
    [row] = result["subnets"]
    assert row["params"] == 6_738_415_616 and row["size_ratio"] == 1.0


def test_subnet_stats_keeps_config_as_a_hidden_deprecated_alias_of_model(capsys, tmp_path, config_7b):
    subnet = write(tmp_path / "full.json", {"num_layers": 32, "intermediate_sizes": [11008] * 32})
    results = [
        run_cli(capsys, "subnet", "stats", flag, config_7b, "--space", "llama2-7b-paper", "--subnet", subnet, "--json")
        for flag in ("--model", "--config")
    ]
    assert results[0][0] == results[1][0] == 0 and json.loads(results[0][1]) == json.loads(results[1][1])
    assert results[0][2] == "" and results[1][2] == DEPRECATED.format(old="--config", new="--model")
    code, out, _ = run_cli(capsys, "subnet", "stats", "--help")
    assert code == 0 and "--model" in out and "--config" not in out


def test_subnet_stats_text_table(capsys, tmp_path, config_7b):
    subnet = write(tmp_path / "s.json", {"num_layers": 24, "intermediate_sizes": [5504] * 24})
    code, out, _ = run_cli(capsys, "subnet", "stats", "--model", config_7b, "--space", "llama2-7b-paper",
                       "--subnet", subnet)
    assert code == 0 and "3,496,153,088" in out and "1.93x" in out


def test_subnet_extract_writes_a_loadable_model(capsys, tmp_path, small_checkpoint, small_space_file):
    subnet = SubnetConfig(3, (32, 128, 64))
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "subnet", "extract", "--model", str(small_checkpoint), "--space",
                         str(small_space_file), "--subnet", subnet.to_json(), "--out", str(out_dir))
    assert code == 0 and out.strip() == str(out_dir)
    model, config, _ = load_model(out_dir)
    expected = SuperNetwork.load(small_checkpoint).extract(subnet)
    for name, tensor in expected.state_dict().items():
        assert (model.state_dict()[name] == tensor).all()
    assert config["llamanas"]["subnet_id"] == subnet.id
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name not in {"out"}]  # no temporary left behind


# ---- bad inputs: exit 2, one line, nothing written --------------------------------------------------


@pytest.mark.parametrize(
    "content, fragments",
    [
        ('{"num_layers": 32, ', ["s.json: not valid JSON"]),
        ({"num_layers": 32, "intermediate_sizes": [11008] * 32, "heads": 4}, ["unknown key(s) ['heads']"]),
        ({"num_layers": 32, "intermediate_sizes": [11008] * 31}, ["intermediate_sizes has 31 entries, expected"]),
        (
            {"num_layers": 32, "intermediate_sizes": [11008] * 7 + [6000] + [11008] * 24},
            ["s.json: layer 7: intermediate size 6000 is not in {5504, 11008}"],
        ),
        ({"num_layers": 30, "intermediate_sizes": [11008] * 30}, ["num_layers 30 is not in {24, 28, 32}"]),
    ],
)
def test_stats_bad_subnet_files(capsys, tmp_path, config_7b, content, fragments):
    subnet = write(tmp_path / "s.json", content)
    result = run_cli(capsys, "subnet", "stats", "--model", config_7b, "--space", "llama2-7b-paper", "--subnet", subnet)
    assert_bad_input(result, *fragments)


def test_bad_line_in_a_json_lines_file_is_named(capsys, tmp_path, config_7b):
    good = json.dumps({"num_layers": 24, "intermediate_sizes": [5504] * 24})
    subnet = write(tmp_path / "s.jsonl", good + "\n" + good.replace("24,", "28,") + "\n")
    result = run_cli(capsys, "subnet", "stats", "--model", config_7b, "--space", "llama2-7b-paper", "--subnet", subnet)
    assert_bad_input(result, "s.jsonl:2: intermediate_sizes has 24 entries, expected num_layers = 28")


def test_missing_files_and_dirs(capsys, tmp_path, config_7b, small_space_file):
    subnet = write(tmp_path / "s.json", {"num_layers": 2, "intermediate_sizes": [32, 32]})
    assert_bad_input(
        run_cli(capsys, "subnet", "extract", "--model", str(tmp_path / "nope"), "--space", str(small_space_file),
            "--subnet", subnet, "--out", str(tmp_path / "o")),
        "nope: no such model directory or config.json",
    )
    assert_bad_input(
        run_cli(capsys, "subnet", "stats", "--model", config_7b, "--space", "llama2-7b-paper",
            "--subnet", str(tmp_path / "missing.json")),
        "missing.json: cannot read",
    )
    assert_bad_input(run_cli(capsys, "space", "show", "no-such-space"), "no such built-in space")
    assert not (tmp_path / "o").exists()


def test_model_dir_without_weights(capsys, tmp_path, small_space_file):
    model_dir = small_config_dir(tmp_path)
    (model_dir / "pytorch_model.bin").write_bytes(b"not loaded")
    result = run_cli(capsys, "subnet", "extract", "--model", str(model_dir), "--space", str(small_space_file),
                 "--subnet", '{"num_layers": 2, "intermediate_sizes": [32, 32]}', "--out", str(tmp_path / "o"))
    assert_bad_input(result, "no model.safetensors", "pickled .bin checkpoints are never loaded")


@pytest.mark.parametrize("command", ["stats", "extract"])
def test_non_llama_config(capsys, tmp_path, small_space_file, command):
    model_dir = tmp_path / "gpt2"
    model_dir.mkdir()
    write(model_dir / "config.json", {"model_type": "gpt2", "n_layer": 4, "n_embd": 64, "vocab_size": 256})
    args = ["--subnet", '{"num_layers": 2, "intermediate_sizes": [32, 32]}', "--space", str(small_space_file)]
    args += ["--model", str(model_dir)] + (["--out", str(tmp_path / "o")] if command == "extract" else [])
    assert_bad_input(run_cli(capsys, "subnet", command, *args), "model_type 'gpt2' is not supported (supported: ['llama'])")


def test_incomplete_llama_config(capsys, tmp_path, small_space_file):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    write(model_dir / "config.json", {k: v for k, v in SMALL_CONFIG.items() if k != "hidden_size"})
    result = run_cli(capsys, "subnet", "extract", "--model", str(model_dir), "--space", str(small_space_file),
                 "--subnet", '{"num_layers": 2, "intermediate_sizes": [32, 32]}', "--out", str(tmp_path / "o"))
    assert_bad_input(result, "missing field 'hidden_size'")


def test_model_that_does_not_fit_the_space(capsys, tmp_path, gqa_checkpoint, config_7b):
    subnet = '{"num_layers": 24, "intermediate_sizes": [' + ", ".join(["5504"] * 24) + "]}"
    result = run_cli(capsys, "subnet", "extract", "--model", str(gqa_checkpoint), "--space", "llama2-7b-paper",
                 "--subnet", subnet, "--out", str(tmp_path / "o"))
    assert_bad_input(result, "super-network has 4 layers and intermediate size 128, but space llama2-7b-paper")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("{broken", "not valid JSON"),
        ({"name": "x", "super_network": {"num_hidden_layers": 4}}, "super_network must be an object with"),
        ({"name": "x", "super_network": {"num_hidden_layers": 4, "intermediate_size": 128},
          "depth": {"choices": [2]}, "layer_dims": {"intermediate_sizes": {"choices": ["64"]}}},
         "layer_dims.intermediate_sizes.choices must be a non-empty list of positive integers"),
    ],
)
def test_malformed_space_file(capsys, tmp_path, config_7b, content, fragment):
    space = write(tmp_path / "space.json", content)
    assert_bad_input(run_cli(capsys, "space", "show", space), f"{space}: ", fragment)
    subnet = write(tmp_path / "s.json", {"num_layers": 2, "intermediate_sizes": [32, 32]})
    assert_bad_input(run_cli(capsys, "subnet", "stats", "--model", config_7b, "--space", space, "--subnet", subnet))


def test_extract_refuses_a_non_empty_out_dir(capsys, tmp_path, small_checkpoint, small_space_file):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("precious")
    result = run_cli(capsys, "subnet", "extract", "--model", str(small_checkpoint), "--space", str(small_space_file),
                 "--subnet", '{"num_layers": 2, "intermediate_sizes": [32, 32]}', "--out", str(out_dir))
    assert_bad_input(result, "--out: ", "exists and is not an empty directory; refusing to overwrite it")
    assert [p.name for p in out_dir.iterdir()] == ["keep.txt"]
    assert (out_dir / "keep.txt").read_text() == "precious"


def test_extract_validates_before_writing(capsys, tmp_path, small_checkpoint, small_space_file):
    out_dir = tmp_path / "out"
    result = run_cli(capsys, "subnet", "extract", "--model", str(small_checkpoint), "--space", str(small_space_file),
                 "--subnet", '{"num_layers": 2, "intermediate_sizes": [32, 33]}', "--out", str(out_dir))
    assert_bad_input(result, "--subnet: layer 1: intermediate size 33 is not in {32, 64, 96, 128}")
    assert not out_dir.exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["space", "sample", "tiny", "-n", "0"], "llamanas space sample: Invalid value for '-n' / '--num'"),
        (["space", "sample"], "llamanas space sample: Missing argument 'NAME'"),
        (["no-such-command"], "No such command 'no-such-command'"),
    ],
)
def test_option_errors_are_one_line_too(capsys, args, fragment):
    assert_bad_input(run_cli(capsys, *args), fragment)


# ---- options: one definition, one meaning, defaults from the settings ----------------------------------
def command(path: str) -> click.Command:
    """The command at `path` ('subnet stats'), its module imported as `llamanas` would."""
    found: click.Command = cli
    for name in path.split():
        found = found.get_command(click.Context(found), name)
    return found


def commands(group: click.Group = cli, prefix: str = "") -> dict[str, click.Command]:
    """Every command of the tree by its path."""
    found = {}
    for name in group.list_commands(click.Context(group)):
        sub = group.get_command(click.Context(group), name)
        found |= commands(sub, f"{prefix}{name} ") if isinstance(sub, click.Group) else {f"{prefix}{name}": sub}
    return found


# flags that name a different thing in some command (known; each meaning is still defined once)
DIFFERENT_MEANINGS = {
    "--precision": "profile: the profiled precision; export: the artifact's (each command's own subject)",
    "--batch-size": "finetune: training rows per step; elsewhere the measured workload's batch",
    "--samples": "fit: fit on the first K sub-networks; profile, run: sub-networks to profile",
    "--metric": "fit: the hardware metric; evaluate: the multiple-choice scoring",
    "--strategy": "space sample: the sampling; finetune: the training",
}


def test_a_flag_several_commands_take_is_one_definition():
    helps = {s.help for m in (options, registry_options) for s in vars(m).values() if isinstance(s, options.Shared)}
    definitions: dict[str, list[str]] = {}  # flag -> the help texts its takers' helps begin with
    for taker in commands().values():
        for option in (p for p in taker.params if isinstance(p, click.Option) and p.name != "help"):
            base = next((h for h in helps if (option.help or "").startswith(h)), option.help)
            definitions.setdefault(option.opts[0], []).append(base)
    several = {flag: bases for flag, bases in definitions.items() if len(bases) > 1}
    apart = {flag for flag, bases in several.items() if len(set(bases)) > 1 or bases[0] not in helps}
    assert apart == set(DIFFERENT_MEANINGS), apart


@pytest.mark.parametrize("path, settings", [
    ("profile", "llamanas_deploy.profiler.runner:ProfileSettings"), ("fit", "llamanas_deploy.predict.train:FitSettings"),
    ("export", "llamanas_deploy.exporter.pipeline:ExportSettings"), ("finetune", "llamanas_deploy.finetuning:FinetuneSettings"),
    ("evaluate", "llamanas_deploy.evaluate:EvalSettings"), ("run", "llamanas_deploy.loop:RunSettings"),
])  # fmt: skip
def test_option_defaults_are_the_settings_fields(path, settings):
    import importlib

    module, name = settings.split(":")
    fields = dataclasses.fields(getattr(importlib.import_module(module), name))
    given = command(path).make_context(path, [], resilient_parsing=True).params  # no option given
    defaults = {f.name: f.default for f in fields if f.name in given and f.default is not dataclasses.MISSING}
    assert len(defaults) >= 3 and {k: given[k] for k in defaults} == defaults


@pytest.mark.parametrize("args, name, value, old, new", [
    (["run", "--precision", "int4"], "export_precision", "int4", "--precision", "--export-precision"),
    (["run", "--backend-precision", "int8"], "backend_precision", "int8", "--backend-precision", "--profile-precision"),
    (["fit", "--profile", "p", "--out", "p.json", "--precision", "bf16"], "precision", "bf16", "--precision",
     "--profile-precision"),
])  # fmt: skip
def test_a_renamed_option_keeps_its_old_spelling_for_a_release(capsys, args, name, value, old, new):
    taker = command(args[0])
    assert taker.make_context(args[0], args[1:]).params[name] == value
    assert capsys.readouterr().err == DEPRECATED.format(old=old, new=new)
    assert taker.make_context(args[0], [new if a == old else a for a in args[1:]]).params[name] == value
    assert capsys.readouterr().err == ""
    help_text = taker.get_help(click.Context(taker))
    assert new in help_text and f"{old} " not in help_text.replace(new, "")


def test_run_backend_is_one_of_the_backends(capsys, tmp_path):
    result = run_cli(capsys, "run", "--backend", "tvm", "--out", str(tmp_path / "r"))
    assert_bad_input(result, "llamanas run: ", "--backend", "'tvm'", "torch-compile")
    assert not (tmp_path / "r").exists()


# ---- the installed command ----------------------------------------------------------------------------


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from llamanas_deploy.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'xgboost', 'pymoo', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "space" in done.stdout and "subnet" in done.stdout


def test_console_script_bad_input_has_no_traceback(tmp_path):
    subnet = write(tmp_path / "s.json", "[1, 2]")
    done = subprocess.run(
        [sys.executable, "-m", "llamanas_deploy", "subnet", "stats", "--subnet", subnet],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr == f"error: {subnet}: expected a JSON object, got list\n"
    assert done.stdout == ""
