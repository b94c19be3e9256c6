"""`llamanas search` end to end on real components: a tiny-shaped random-weight super-network
with the shipped tokenizer and held-out text (real perplexity), and a real XGBoost latency
predictor fitted on the tiny space with a known law."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

from conftest import SMALL_SPACE, write_space
from llamanas_deploy.model.families import ASSETS_DIR, read_shape

TINY = ASSETS_DIR / "tiny"


@pytest.fixture(scope="module")
def tiny_random_model(tmp_path_factory):
    """The embedded default's architecture and tokenizer, random weights."""
    from llamanas_deploy.model.build import save_model
    from llamanas_deploy.model.supernet import SuperNetwork

    out = tmp_path_factory.mktemp("tiny") / "model"
    save_model(SuperNetwork.random("tiny", seed=0).model, out)
    for name in ("tokenizer.json", "tokenizer_config.json", "heldout.txt", "mc_task.jsonl"):
        shutil.copy(TINY / name, out / name)
    return out


def _predictor(path, space_name_or_file, model="tiny"):
    from llamanas_deploy.predict import FeatureBuilder, LatencyPredictor
    from llamanas_deploy.space import load_space

    space = load_space(space_name_or_file)
    configs = space.sample_random(60, seed=0)
    y = [1.0 + 0.3 * c.num_layers + sum(c.intermediate_sizes) / 2000 for c in configs]
    shapes = {"batch_size": 1, "prompt_len": 128, "context_len": 128, "gen_len": 32}
    features = FeatureBuilder(space, read_shape(model), shapes)
    grid = {"max_depth": (2,), "num_boost_round": (50,)}
    LatencyPredictor(features, "decode_ms", param_grid=grid).fit(configs, y).save(path)
    return path


@pytest.fixture(scope="module")
def tiny_predictor(tmp_path_factory):
    return _predictor(tmp_path_factory.mktemp("pred") / "tiny.json", "tiny")


@pytest.fixture
def llamanas(capsys):
    """Run the CLI in this process (its real entry point, exit codes included)."""
    from llamanas_deploy.cli import main

    def run(*args):
        with pytest.raises(SystemExit) as done:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        return SimpleNamespace(returncode=done.value.code, stdout=captured.out, stderr=captured.err)

    return run


def test_search_end_to_end_then_resume(tmp_path, tiny_random_model, tiny_predictor, llamanas):
    args = [
        "search", "--model", tiny_random_model, "--space", "tiny", "--objective", f"latency:{tiny_predictor}",
        "--algorithm", "nsga2", "--population", "6", "--evaluations", "12", "--eval-tokens", "256",
        "--out", tmp_path / "out", "--json",
    ]  # fmt: skip
    run = llamanas(*args)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert [o["name"] for o in report["objectives"]] == ["perplexity", "decode_ms"]
    assert report["evaluations"] == 12 == report["measured_now"]
    assert "generation 0: 6/12 evaluations" in run.stderr
    for name in ("front.json", "front.png", "evaluations.jsonl", "evaluations.csv", "hypervolume.json", "summary.txt"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    full = report["full"]["values"]
    assert full["perplexity"] > 1 and full["decode_ms"] > 0 and full["fp16_gib"] > 0
    assert all("x smaller" in line and "faster (predicted decode_ms)" in line for line in report["summary"])

    again = llamanas(*args)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["measured_now"] == 0
    assert json.loads(again.stdout)["front"] == report["front"]


def test_front_entry_feeds_subnet_commands(tmp_path, tiny_random_model, tiny_predictor, llamanas):
    out = tmp_path / "out"
    args = ["search", "--model", tiny_random_model, "--space", "tiny", "--objective", f"latency:{tiny_predictor}",
            "--algorithm", "random", "--population", "4", "--evaluations", "4", "--eval-tokens", "128", "--out", out]  # fmt: skip
    assert llamanas(*args).returncode == 0
    stats = llamanas("subnet", "stats", "--model", tiny_random_model, "--space", "tiny",
                      "--subnet", f"{out}/front.json#0", "--json")  # fmt: skip
    assert stats.returncode == 0, stats.stderr
    front = json.loads((out / "front.json").read_text())["front"]
    assert json.loads(stats.stdout)["subnets"][0]["id"] == front[0]["subnet_id"]


def test_predictor_of_another_space_is_refused(tmp_path, tiny_random_model, llamanas):
    other = write_space(tmp_path / "other.json", **{**SMALL_SPACE, "name": "other"})
    wrong = _predictor(tmp_path / "other.json.pred", other, model="tiny")
    run = llamanas("search", "--model", tiny_random_model, "--space", "tiny", "--objective", f"latency:{wrong}",
                    "--evaluations", "4", "--out", tmp_path / "out")  # fmt: skip
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1
    assert "fitted for space other-" in run.stderr and "tiny-" in run.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "objective, message",
    [("latency", "expected accuracy"), ("speed:x", "expected accuracy"), ("latency:/nonexistent.json", "nonexistent")],
)
def test_bad_objectives_exit_2_with_one_line(tmp_path, tiny_random_model, objective, message, llamanas):
    run = llamanas("search", "--model", tiny_random_model, "--objective", objective, "--out", tmp_path / "out")
    assert run.returncode == 2
    assert len(run.stderr.strip().splitlines()) == 1 and message in run.stderr


def test_other_settings_in_out_dir_exit_2(tmp_path, tiny_random_model, llamanas):
    base = ["search", "--model", tiny_random_model, "--objective", "size", "--population", "3",
            "--evaluations", "3", "--eval-tokens", "128", "--out", tmp_path / "out"]  # fmt: skip
    assert llamanas(*base, "--seed", "1").returncode == 0
    run = llamanas(*base, "--seed", "2")
    assert run.returncode == 2 and "different settings (seed differ)" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flag", ["--max-latency", "--max-size"])
@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_limits_must_be_finite_and_positive(tmp_path, flag, value, llamanas):
    run = llamanas("search", "--objective", "size", flag, value, "--out", tmp_path / "out")
    assert run.returncode == 2
    line = run.stderr.strip()
    assert "\n" not in line and line.startswith("error:") and f"'{flag}'" in line  # click refuses it, naming the flag
    assert not (tmp_path / "out").exists()


def test_accuracy_on_the_models_task(tmp_path, tiny_random_model, llamanas):
    run = llamanas("search", "--model", tiny_random_model, "--objective", "accuracy:task", "--objective", "size",
                   "--algorithm", "random", "--population", "3", "--evaluations", "3", "--eval-examples", "4",
                   "--out", tmp_path / "out", "--json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["objectives"] == [{"name": "acc_norm", "direction": "max"}, {"name": "fp16_gib", "direction": "min"}]
    assert all(0 <= e["objectives"]["acc_norm"] <= 1 for e in report["front"])
    measures = json.loads((tmp_path / "out" / "search.json").read_text())["measures"]
    assert measures[0]["kind"] == "multiple_choice" and measures[0]["max_examples"] == 4
