"""Latency predictors: features, fit -> save -> load, recovery of a known law, refusals, the CLI.

Profiles here are synthetic, written in the profiler's file format (docs/CONTRACTS.md) with a
known latency law, so what the predictor should recover is known exactly.
"""

from __future__ import annotations

import contextlib
import io
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from llamanas_deploy import __version__
from llamanas_deploy.analytics import subnet_stats
from llamanas_deploy.cli import main
from llamanas_deploy.errors import BadInputError
from llamanas_deploy.model.families import read_shape
from llamanas_deploy.predict import (
    FeatureBuilder,
    FitResult,
    FitSettings,
    LatencyPredictor,
    NotFittedError,
    fit,
    list_latency_predictors,
    load_latency_predictor,
    predict_subnets,
)
from llamanas_deploy.predict.dataset import load_profile_data
from llamanas_deploy.space import load_space
from llamanas_deploy.subnet_config import SubnetConfig

SHAPES = {"batch_size": 1, "prompt_len": 128, "context_len": 128, "gen_len": 32}
LAYER_MS = {192: 0.30, 384: 0.42, 576: 0.61, 768: 0.70}  # deliberately not linear in width
FINGERPRINT_ID = "00aa11bb22cc33dd"
# predictions for (smallest, largest) of the shipped predictors, by the code that fitted and saved them
SHIPPED_PREDICTIONS = {
    "amd-epyc-2c-smollm2-onnxruntime-int8-decode_ms": (7.5648952494834605, 12.518405133014607),
    "amd-epyc-2c-torch-fp32-decode_ms": (1.8408116928935399, 5.610447014196929),
    "amd-epyc-2c-torch-fp32-prefill_ms": (8.160608605926658, 26.397071321594808),
    "dev-cpu-2c-avx512-amx-onnxruntime-int8-decode_ms": (0.8668236338620328, 1.497123071467034),
    "dev-cpu-2c-avx512-amx-torch-fp32-decode_ms": (1.8899339396904262, 4.863478973175127),
    "dev-cpu-2c-avx512-amx-torch-fp32-peak_mem": (17.650193500612133, 36.507563223601565),
    "dev-cpu-2c-avx512-amx-torch-fp32-prefill_ms": (7.07943564780892, 21.67622495643337),
    "dev-cpu-2c-avx512-amx-torch-fp32-throughput": (466.3927592396773, 192.22492910993188),
}


def law_ms(cfg: SubnetConfig) -> float:
    """Decode latency of the synthetic device: a per-layer table plus an interaction term."""
    wide, narrow = cfg.intermediate_sizes.count(768), cfg.intermediate_sizes.count(192)
    return 0.6 + sum(LAYER_MS[w] for w in cfg.intermediate_sizes) + 0.05 * wide * narrow


def write_profile(
    path: Path, n: int, noise: float = 0.005, seed: int = 0, fingerprint_id: str = FINGERPRINT_ID, **record_overrides
) -> Path:
    """A profile directory of `n` tiny-space sub-networks whose figures follow `law_ms`."""
    space, rng = load_space("tiny"), np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    target = path.name
    fingerprint = {"schema_version": 1, "target": target, "fingerprint_id": fingerprint_id, "device": {"cpu_model": "x"}}
    (path / "fingerprint.json").write_text(json.dumps(fingerprint))

    def figure(value: float) -> dict:
        return {"median": value * (1 + noise * rng.standard_normal()), "iqr": 0.01, "cv": 0.01, "n": 8, "flagged": False}

    lines = []
    for cfg in space.sample_random(n, seed):
        t = law_ms(cfg)
        record = {
            "schema_version": 1, "target": target, "fingerprint_id": fingerprint_id, "space_id": space.id,
            "model_id": read_shape("tiny").id, "backend": "torch", "precision": "fp32", "device": "cpu",
            "threads": 1, "clock": "cpu", "shapes": SHAPES, "subnet": cfg.to_dict(), "subnet_id": cfg.id,
            "prefill_ms": figure(3 * t**1.1), "decode_ms": figure(t), "throughput_tok_s": figure(1000 / (1.05 * t)),
            "peak_mem_mib": 10.0 + cfg.num_layers, "model_bytes": 1, "flagged": False, "timestamp": "2026-01-01T00:00:00+00:00",
        } | record_overrides  # fmt: skip
        lines.append(json.dumps(record))
    (path / "measurements.jsonl").write_text("\n".join(lines) + "\n")
    return path


def assert_bad_input(result: tuple[int, str, str], *fragments: str) -> None:
    code, out, err = result
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err
    assert out == ""


@pytest.fixture(scope="module")
def features() -> FeatureBuilder:
    return FeatureBuilder(load_space("tiny"), read_shape("tiny"), SHAPES)


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    return write_profile(tmp_path_factory.mktemp("profiles") / "synthetic-box", 160)


@pytest.fixture(scope="module")
def fitted(features, profile) -> tuple[LatencyPredictor, list[SubnetConfig], np.ndarray]:
    """A predictor fitted on 120 sub-networks; the other 40 are returned as a held-out set."""
    data = load_profile_data(profile, "decode_ms")
    predictor = LatencyPredictor(features, "decode_ms").fit(data.configs[:120], data.y[:120], provenance=data.provenance())
    return predictor, data.configs[120:], data.y[120:]


@pytest.fixture(scope="module")
def cli_fit(tmp_path_factory, profile) -> tuple[Path, dict, Path]:
    """`llamanas fit --json --plot` on the synthetic profile, through the real entry point."""
    out_dir = tmp_path_factory.mktemp("predictors")
    out, plot = out_dir / "synthetic-decode_ms.json", out_dir / "synthetic-decode_ms.png"
    stdout = io.StringIO()
    with pytest.raises(SystemExit) as done, contextlib.redirect_stdout(stdout):
        main(["fit", "--profile", str(profile), "--metric", "decode_ms", "--out", str(out), "--plot", str(plot), "--json"])
    assert done.value.code == 0
    return out, json.loads(stdout.getvalue()), plot


@pytest.fixture(scope="module")
def cli_predictor(cli_fit) -> Path:
    return cli_fit[0]


# ---- features ---------------------------------------------------------------------------------
def test_analytic_features_equal_subnet_stats(features):
    configs = load_space("tiny").sample_random(25, seed=3)
    X = features.transform(configs)
    for cfg, row in zip(configs, X):
        stats = subnet_stats(read_shape("tiny"), cfg, SHAPES["prompt_len"], SHAPES["context_len"])
        for name in ("params", "matmul_params", "prefill_flops", "decode_flops", "decode_bytes_moved"):
            assert row[features.names.index(name)] == getattr(stats, name), name
        assert row[features.names.index("depth")] == cfg.num_layers
        assert row[features.names.index("layers_of_width_576")] == cfg.intermediate_sizes.count(576)


def test_gene_and_config_paths_give_the_same_features(features):
    space = load_space("tiny")
    genes = np.random.default_rng(0).integers(0, space.encoding_upper_bounds + 1, size=(200, len(space.encoding_upper_bounds)))
    from_genes = features.transform_widths(*features.widths_from_genes(genes))
    from_configs = features.transform([space.decode(g) for g in genes])
    np.testing.assert_array_equal(from_genes, from_configs)


def test_configs_outside_the_space_are_refused(features):
    with pytest.raises(BadInputError, match="intermediate size 200 is not in"):
        features.transform([SubnetConfig(4, (192, 200, 192, 192))])
    with pytest.raises(BadInputError, match="num_layers 3 is not in"):
        features.transform([SubnetConfig(3, (192, 192, 192))])


# ---- the estimator ----------------------------------------------------------------------------
def test_recovers_a_known_law_on_held_out_subnets(fitted):
    predictor, held_out, measured = fitted
    truth = np.array([law_ms(c) for c in held_out])
    predicted = predictor.predict(held_out)
    assert np.mean(np.abs(predicted / truth - 1)) < 0.03
    assert np.mean(np.abs(predicted / measured - 1)) < 0.03
    assert predictor.cv_mape_pct_ is not None and predictor.best_params_["max_depth"] in (2, 4)


def test_fit_save_load_gives_identical_predictions(fitted, tmp_path):
    predictor, held_out, _ = fitted
    path = predictor.save(tmp_path / "p.json")
    loaded = LatencyPredictor.load(path)
    np.testing.assert_array_equal(loaded.predict(held_out), predictor.predict(held_out))
    assert loaded.metadata_ == json.loads(json.dumps(predictor.metadata_))
    assert loaded.metadata_["space_id"] == load_space("tiny").id
    assert loaded.metadata_["fingerprint_id"] == FINGERPRINT_ID


def test_predict_genes_matches_predict(fitted):
    predictor, _, _ = fitted
    space = predictor.features.space
    genes = np.random.default_rng(1).integers(0, space.encoding_upper_bounds + 1, size=(50, len(space.encoding_upper_bounds)))
    np.testing.assert_allclose(predictor.predict_genes(genes), predictor.predict([space.decode(g) for g in genes]), rtol=1e-12)


def test_throughput_is_predicted_as_a_rate(features, profile):
    data = load_profile_data(profile, "throughput")
    predictor = LatencyPredictor(features, "throughput", param_grid={"max_depth": (2,), "num_boost_round": (100,)})
    predictor.fit(data.configs[:100], data.y[:100])
    small, large = load_space("tiny").smallest, load_space("tiny").largest
    fast, slow = predictor.predict([small, large])
    assert fast > slow
    assert abs(fast / (1000 / (1.05 * law_ms(small))) - 1) < 0.05


def test_visits_of_a_subnet_become_the_best_of_their_fast_ends(tmp_path):
    one_visit = write_profile(tmp_path / "one", 12)
    records = [json.loads(line) for line in (one_visit / "measurements.jsonl").read_text().splitlines()]
    visits = []
    for visit, slowdown in enumerate((1.0, 1.6, 1.1)):  # the host was slow during the second pass
        for r in records:
            figure = r["decode_ms"]
            best = figure["median"] * 0.95 * slowdown
            visits.append(r | {"visit": visit, "decode_ms": figure | {"median": figure["median"] * slowdown, "best": best}})
    profile = tmp_path / "three"
    profile.mkdir()
    (profile / "fingerprint.json").write_text((one_visit / "fingerprint.json").read_text())
    (profile / "measurements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in visits))
    data = load_profile_data(profile, "decode_ms")
    assert data.statistic == "best" and data.provenance()["statistic"] == "best"
    assert [len(v) for v in data.visits] == [3] * 12
    np.testing.assert_allclose(data.y, [r["decode_ms"]["median"] * 0.95 for r in records])
    assert load_profile_data(profile, "peak_mem").y[0] == records[0]["peak_mem_mib"]
    # one record without the fast end (an older profile): every sub-network falls back to medians
    (profile / "measurements.jsonl").write_text("".join(json.dumps(r) + "\n" for r in visits + records[:1]))
    data = load_profile_data(profile, "decode_ms")
    assert data.statistic == "median"
    assert data.y[0] == pytest.approx(np.median([records[0]["decode_ms"]["median"] * k for k in (1.0, 1.6, 1.1, 1.0)]))


def test_unfitted_predictor_says_so(features):
    with pytest.raises(NotFittedError, match="not fitted"):
        LatencyPredictor(features).predict([load_space("tiny").smallest])


def test_check_space_and_target_refuse_mismatches(fitted):
    predictor, _, _ = fitted
    predictor.check_space(load_space("tiny"))
    predictor.check_target({"fingerprint_id": FINGERPRINT_ID})
    with pytest.raises(BadInputError, match="fitted for space tiny-"):
        predictor.check_space(load_space("llama2-7b-paper"))
    with pytest.raises(BadInputError, match="fingerprint ffff"):
        predictor.check_target({"target": "other-box", "fingerprint_id": "ffff000011112222"})


def test_a_failed_save_keeps_the_existing_file(fitted, tmp_path, monkeypatch):
    predictor, _, _ = fitted
    path = predictor.save(tmp_path / "p.json")
    before = path.read_bytes()
    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", disk_full)
    with pytest.raises(OSError):
        predictor.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]


# ---- files on disk ------------------------------------------------------------------------------
def test_truncated_predictor_file_exits_2(capsys, cli_predictor, tmp_path):
    broken = tmp_path / "truncated.json"
    broken.write_bytes(cli_predictor.read_bytes()[:5000])
    assert_bad_input(run_cli(capsys, "predict", "--predictor", str(broken), "--subnet", "{\"num_layers\": 4, \"intermediate_sizes\": [192, 192, 192, 192]}"), "truncated.json", "not valid JSON")


def test_corrupted_predictor_file_exits_2(capsys, cli_predictor, tmp_path):
    body = json.loads(cli_predictor.read_text())
    body["xgboost"]["learner"]["gradient_booster"]["model"]["trees"][0]["base_weights"][0] += 0.5
    broken = tmp_path / "corrupted.json"
    broken.write_text(json.dumps(body))
    args = ("predict", "--predictor", str(broken), "--subnet", "{\"num_layers\": 4, \"intermediate_sizes\": [192, 192, 192, 192]}")
    assert_bad_input(run_cli(capsys, *args), "corrupted.json", "sha256")
    not_a_predictor = tmp_path / "other.json"
    not_a_predictor.write_text("{\"hello\": 1}")
    assert_bad_input(run_cli(capsys, "predict", "--predictor", str(not_a_predictor), "--subnet", args[-1]), "other.json")


def test_fit_on_a_corrupt_profile_exits_2_and_keeps_the_old_predictor(capsys, cli_predictor, tmp_path):
    bad = write_profile(tmp_path / "bad-box", 20)
    lines = (bad / "measurements.jsonl").read_text().splitlines()
    lines[4] = lines[4][: len(lines[4]) // 2]
    (bad / "measurements.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "keep.json"
    out.write_bytes(cli_predictor.read_bytes())
    assert_bad_input(run_cli(capsys, "fit", "--profile", str(bad), "--out", str(out)), "measurements.jsonl:5")
    assert out.read_bytes() == cli_predictor.read_bytes()


def test_fit_needs_one_setting(capsys, tmp_path):
    mixed = write_profile(tmp_path / "mixed-box", 30)
    extra = write_profile(tmp_path / "onnx", 30, seed=1, backend="ort")
    with open(mixed / "measurements.jsonl", "a") as f:
        f.write((extra / "measurements.jsonl").read_text().replace("\"target\": \"onnx\"", "\"target\": \"mixed-box\""))
    assert_bad_input(run_cli(capsys, "fit", "--profile", str(mixed), "--out", str(tmp_path / "p.json")), "--backend")
    assert not (tmp_path / "p.json").exists()


# ---- the CLI ----------------------------------------------------------------------------------
def test_fit_reports_every_model_on_the_same_split(cli_fit):
    out, result, plot = cli_fit
    models = [row["model"] for row in result["comparison"]]
    assert len(models) == 6 and any("ridge" in m for m in models) and any("random forest" in m for m in models)
    assert [row["n_train"] for row in result["learning_curve"]] == [10, 20, 50, 100, 128]
    meta = LatencyPredictor.load(out).metadata_
    assert meta["n_test"] == 32 and meta["test_metrics"] == {k: v for k, v in result["comparison"][0].items() if k != "model"}
    assert meta["target"] == "synthetic-box" and meta["backend"] == "torch" and meta["shapes"] == SHAPES
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_one_and_many(capsys, cli_predictor, tmp_path):
    configs = load_space("tiny").sample_random(5, seed=9)
    lines = tmp_path / "subnets.jsonl"
    lines.write_text("\n".join(c.to_json() for c in configs) + "\n")
    code, stdout, err = run_cli(capsys, "predict", "--predictor", str(cli_predictor), "--subnet", str(lines), "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert [p["subnet_id"] for p in result["predictions"]] == [c.id for c in configs]
    values = np.array([p["value"] for p in result["predictions"]])
    assert np.all(np.abs(values / np.array([law_ms(c) for c in configs]) - 1) < 0.1)
    code, stdout, _ = run_cli(capsys, "predict", "--predictor", str(cli_predictor), "--subnet", configs[0].to_json())
    assert code == 0 and configs[0].id in stdout


def test_predict_refuses_another_space_or_target(capsys, cli_predictor, tmp_path, small_space_file):
    subnet = load_space("tiny").smallest.to_json()
    args = ("predict", "--predictor", str(cli_predictor), "--subnet", subnet)
    assert_bad_input(run_cli(capsys, *args, "--space", str(small_space_file)), "fitted for space tiny-", "small-test-")
    other = write_profile(tmp_path / "other-box", 1, fingerprint_id="ffff000011112222")
    assert_bad_input(run_cli(capsys, *args, "--target-profile", str(other)), "other-box", "ffff000011112222")
    wide = '{"num_layers": 4, "intermediate_sizes": [192, 192, 192, 1000]}'
    assert_bad_input(run_cli(capsys, "predict", "--predictor", str(cli_predictor), "--subnet", wide), "intermediate size 1000")


def test_another_feature_schema_is_refused(cli_predictor, tmp_path):
    from llamanas_deploy.predict.predictor_file import _digest

    body = json.loads(cli_predictor.read_text())
    del body["sha256"]
    body["features"]["feature_schema_version"] = 99
    future = tmp_path / "future.json"
    future.write_text(json.dumps(body | {"sha256": _digest(body)}))
    with pytest.raises(BadInputError, match="feature schema version 99 is not supported"):
        LatencyPredictor.load(future)


@pytest.mark.parametrize("path", sorted((Path(__file__).parent.parent / "predictors").glob("*.json")), ids=lambda p: p.name)
def test_shipped_predictors_load_for_their_space(path):
    predictor = LatencyPredictor.load(path)
    meta = predictor.metadata_
    space = load_space(predictor.features.space.name)  # the built-in space it was fitted for, unchanged since
    predictor.check_space(space)
    assert path.name == f"{meta['target']}-{meta['backend']}-{meta['precision']}-{meta['metric']}.json"
    values = predictor.predict([space.smallest, space.largest])
    assert np.all(values > 0) and meta["n_test"] > 0 and 0 < meta["test_metrics"]["mape_pct"] < 100


def test_shipped_predictors_are_listed_and_loaded_by_name():
    listed = list_latency_predictors()
    assert [row["name"] for row in listed] == sorted(SHIPPED_PREDICTIONS)
    for row in listed:
        predictor = load_latency_predictor(row["name"])
        assert predictor.source == row["path"] and row["metric"] == predictor.metadata_["metric"]
        space = load_space(predictor.features.space.name)
        np.testing.assert_allclose(predictor.predict([space.smallest, space.largest]), SHIPPED_PREDICTIONS[row["name"]], rtol=1e-12)
        assert load_latency_predictor(row["path"]).to_dict() == predictor.to_dict()
    result = predict_subnets(listed[0]["name"], "largest").to_dict()
    assert result["predictions"][0]["value"] == pytest.approx(SHIPPED_PREDICTIONS[listed[0]["name"]][1], rel=1e-12)
    with pytest.raises(BadInputError, match="torch-fp32-decode_ms") as err:
        load_latency_predictor("no-such-predictor")
    assert err.value.param == "predictor"


def test_predictor_is_a_scikit_learn_estimator(fitted, features, profile):
    from sklearn.base import clone

    predictor, _, _ = fitted
    params = predictor.get_params()
    assert params["features"] is features and params["metric"] == "decode_ms" and "provenance" not in params
    copy = clone(predictor)
    assert not hasattr(copy, "booster_") and copy.get_params(deep=False).keys() == params.keys()
    copy.set_params(param_grid={"max_depth": (2,), "num_boost_round": (30,)}, random_state=3)
    assert copy.get_params()["random_state"] == 3 and predictor.get_params()["random_state"] == 0
    data = load_profile_data(profile, "decode_ms")
    copy.fit(data.configs[:60], data.y[:60])
    assert copy.best_params_ == {"max_depth": 2, "num_boost_round": 30} and copy.cv_mape_pct_ is None
    assert copy.score(data.configs[60:], data.y[60:]) > 0.9  # RegressorMixin: R^2


def test_fit_records_provenance_time_and_versions(fitted):
    meta = fitted[0].metadata_
    assert (meta["target"], meta["fingerprint_id"], meta["backend"], meta["statistic"]) == (
        "synthetic-box", FINGERPRINT_ID, "torch", "median"
    )
    assert datetime.fromisoformat(meta["fitted_at"]).utcoffset().total_seconds() == 0
    assert meta["versions"]["llamanas_deploy"] == __version__ and meta["versions"]["xgboost"]


def test_fit_api_returns_a_fit_result(profile, tmp_path):
    events = []
    result = fit(profile, "prefill_ms", FitSettings(seed=1, learning_curve=False), callback=events.append)
    assert isinstance(result, FitResult) and result.learning_curve == []
    meta = result.predictor.metadata_
    assert meta["metric"] == "prefill_ms" and meta["split"] == {"test_fraction": 0.2, "seed": 1}
    assert result.to_dict()["comparison"] == result.comparison and len(result.comparison) == 6
    assert events[0].message.startswith("fitting prefill_ms on 160 sub-networks of synthetic-box")
    assert [(e.done, e.total) for e in events[1:]] == [(i, 6) for i in range(7)]
    assert result.plot(tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(BadInputError) as err:
        fit(load_profile_data(profile, "prefill_ms"), "decode_ms")
    assert err.value.param == "metric"
    with pytest.raises(BadInputError) as err:
        FitSettings(test_fraction=0.9)
    assert err.value.param == "test_fraction"
