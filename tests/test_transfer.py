"""Predictor transfer on synthetic devices with a known relation.

Device A follows a per-layer latency law (with an interaction term); device B is a scaled, offset
copy of A plus noise, so a transfer from A should recover B from a handful of B's measurements,
where a predictor fitted from scratch on the same handful cannot. Sources of another space, and
of another device *and* another backend, are refused; one of the same device and format has nothing
to transfer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone

from conftest import run_cli
from llamanas_deploy.errors import BadInputError
from llamanas_deploy.model.families import read_shape
from llamanas_deploy.predict import FeatureBuilder, FitSettings, LatencyPredictor, fit, load_profile_data
from llamanas_deploy.predict.estimator import TransferSource
from llamanas_deploy.predict.transfer import AS_IS, RESCALED, SCRATCH
from llamanas_deploy.space import load_space, space_from_dict
from llamanas_deploy.subnet_config import SubnetConfig

SHAPES = {"batch_size": 1, "prompt_len": 128, "context_len": 128, "gen_len": 32}
LAYER_MS = {192: 0.30, 384: 0.42, 576: 0.61, 768: 0.70}
SCALE, OFFSET = 1.8, 0.4  # device B = SCALE * device A + OFFSET (ms), plus noise
DEVICE_A, DEVICE_B = "00aa11bb22cc33dd", "ffee00dd11cc22bb"


def law_a(cfg: SubnetConfig) -> float:
    wide, narrow = cfg.intermediate_sizes.count(768), cfg.intermediate_sizes.count(192)
    return 0.6 + sum(LAYER_MS[w] for w in cfg.intermediate_sizes) + 0.05 * wide * narrow


def law_b(cfg: SubnetConfig) -> float:
    return SCALE * law_a(cfg) + OFFSET


def write_device(path: Path, law, n: int, fingerprint_id: str, settings=(("torch", "fp32"),), noise: float = 0.01,
                 seed: int = 0) -> Path:  # fmt: skip
    """A profile directory of `n` stratified tiny sub-networks (the profiler's plan) per (backend, precision)."""
    space, rng = load_space("tiny"), np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    fingerprint = {"schema_version": 1, "target": path.name, "fingerprint_id": fingerprint_id, "device": {"cpu_model": "x"}}
    (path / "fingerprint.json").write_text(json.dumps(fingerprint))
    lines = []
    for backend, precision in settings:
        factor = 0.5 if backend == "onnxruntime" else 1.0  # the other format: half the time, same shape
        for cfg in space.sample_stratified(n, seed):
            t = factor * law(cfg) * (1 + noise * rng.standard_normal())
            figure = {"median": t, "iqr": 0.01, "cv": 0.01, "n": 8, "flagged": False}
            lines.append(json.dumps({
                "schema_version": 1, "target": path.name, "fingerprint_id": fingerprint_id, "space_id": space.id,
                "model_id": read_shape("tiny").id, "backend": backend, "precision": precision, "device": "cpu",
                "threads": 1, "clock": "cpu", "shapes": SHAPES, "subnet": cfg.to_dict(), "subnet_id": cfg.id,
                "prefill_ms": dict(figure, median=3 * t), "decode_ms": figure,
                "throughput_tok_s": dict(figure, median=1000 / t), "peak_mem_mib": 10.0 + cfg.num_layers,
                "model_bytes": 1, "flagged": False, "timestamp": "2026-01-01T00:00:00+00:00",
            }))  # fmt: skip
    (path / "measurements.jsonl").write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def devices(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("devices")
    a = write_device(root / "device-a", law_a, 120, DEVICE_A, settings=(("torch", "fp32"), ("onnxruntime", "int8")))
    b = write_device(root / "device-b", law_b, 40, DEVICE_B, seed=1)
    source = fit(a, "decode_ms", FitSettings(learning_curve=False), backend="torch", precision="fp32").predictor
    source_file = source.save(root / "device-a-torch-fp32-decode_ms.json")
    return {"a": a, "b": b, "source": source_file}


@pytest.fixture(scope="module")
def transferred(devices):
    return fit(devices["b"], "decode_ms", FitSettings(train_samples=5), transfer_from=devices["source"])


def test_transfer_recovers_a_scaled_offset_copy_from_five_samples(transferred):
    rows = {r["model"]: r for r in transferred.comparison}
    ours = transferred.comparison[0]
    assert ours["model"].startswith("xgboost + source prior") and ours["within_10_pct"] == 100.0 and ours["mape_pct"] < 3
    assert ours["mape_pct"] < rows[SCRATCH]["mape_pct"] and ours["mape_pct"] < rows[AS_IS]["mape_pct"]
    assert RESCALED in rows and rows[AS_IS]["within_10_pct"] == 0.0  # the source alone is 1.8x off
    assert ours["spearman"] > 0.95
    assert [r["n_train"] for r in transferred.learning_curve] == [3, 5]
    data = transferred.data_summary
    assert data["n_train"] == 5 and data["n_test"] == 8


def test_the_file_records_its_source_and_how_many_target_samples_it_saw(transferred, devices, tmp_path):
    meta = transferred.predictor.metadata_["transfer"]
    source_body = json.loads(devices["source"].read_text())
    assert meta["source"]["name"] == "device-a-torch-fp32-decode_ms"
    assert meta["source"]["sha256"] == source_body["sha256"] and meta["source"]["fingerprint_id"] == DEVICE_A
    assert meta["target_samples"] == 5 and meta["kind"] == "device"
    assert meta["prior_coef"]["source_scale"] == pytest.approx(SCALE, rel=0.25)
    path = transferred.predictor.save(tmp_path / "b.json")
    body = json.loads(path.read_text())
    assert body["schema_version"] == 2 and body["transfer"]["predictor"]["sha256"] == source_body["sha256"]
    loaded = LatencyPredictor.load(path)
    configs = load_space("tiny").sample_random(50, 7)
    assert np.array_equal(loaded.predict(configs), transferred.predictor.predict(configs))
    genes = np.array([load_space("tiny").encode(c) for c in configs])
    assert np.allclose(loaded.predict_genes(genes), loaded.predict(configs))
    body["transfer"]["predictor"]["prior"]["coef"][0] += 1.0  # edit the embedded source: the outer hash breaks
    path.write_text(json.dumps(body))
    with pytest.raises(BadInputError, match="sha256"):
        LatencyPredictor.load(path)


def test_a_clone_keeps_its_fitted_source(transferred, devices):
    copy = clone(transferred.predictor)
    assert not hasattr(copy, "booster_") and hasattr(copy.transfer_from.predictor, "booster_")
    data = load_profile_data(devices["b"], "decode_ms", min_subnets=5)
    copy.fit(data.configs[:5], data.y[:5])
    assert copy.metadata_["transfer"]["target_samples"] == 5


def test_another_format_on_the_same_device_transfers_from_its_profile(devices):
    result = fit(devices["a"], "decode_ms", FitSettings(train_samples=5, learning_curve=False), backend="onnxruntime",
                 precision="int8", transfer_from=devices["a"])  # fmt: skip
    meta = result.predictor.metadata_["transfer"]
    assert meta["kind"] == "format" and meta["source"]["backend"] == "torch" and meta["source"]["fitted_from_profile"]
    assert result.comparison[0]["within_10_pct"] == 100.0


def test_sources_of_another_space_or_of_another_device_and_backend_are_refused(devices, tmp_path):
    # another device AND another backend: device A's onnxruntime int8 predictor for device B's torch fp32
    other_format = fit(devices["a"], "decode_ms", FitSettings(learning_curve=False), backend="onnxruntime", precision="int8")
    with pytest.raises(BadInputError, match="another device .* and another backend/precision") as err:
        fit(devices["b"], "decode_ms", FitSettings(train_samples=5), transfer_from=other_format.predictor)
    assert err.value.param == "transfer_from"
    # another space: same super-network, fewer depths
    tiny = load_space("tiny").to_dict()
    narrow = space_from_dict(tiny | {"name": "tiny-deep", "depth": {"choices": [6, 7, 8], "policy": "first"}}, "test")
    features = FeatureBuilder(narrow, read_shape("tiny"), SHAPES)
    configs = narrow.sample_random(20, 0)
    foreign = LatencyPredictor(features, param_grid={"max_depth": (2,), "num_boost_round": (10,)})
    foreign.fit(configs, [law_a(c) for c in configs], provenance={"fingerprint_id": DEVICE_A, "backend": "torch", "precision": "fp32"})
    with pytest.raises(BadInputError, match="fitted for space tiny-deep") as err:
        fit(devices["b"], "decode_ms", FitSettings(train_samples=5), transfer_from=foreign)
    assert err.value.param == "transfer_from"
    # the same device and format: nothing to transfer
    with pytest.raises(BadInputError, match="nothing to transfer"):
        fit(devices["a"], "decode_ms", backend="torch", precision="fp32", transfer_from=devices["source"])
    # the estimator itself refuses a source of other features
    with pytest.raises(BadInputError, match="another space"):
        LatencyPredictor(FeatureBuilder(load_space("tiny"), read_shape("tiny"), SHAPES),
                         transfer_from=TransferSource.of(foreign)).fit(configs[:5], [1.0] * 5)  # fmt: skip


def test_cli_fit_transfer_from(capsys, devices, tmp_path):
    out = tmp_path / "b.json"
    code, stdout, err = run_cli(capsys, "fit", "--profile", str(devices["b"]), "--transfer-from", str(devices["source"]),
                                "--samples", "5", "--out", str(out), "--json")  # fmt: skip
    assert code == 0, err
    printed = json.loads(stdout)
    assert printed["data"]["transfer"]["target_samples"] == 5 and printed["predictor"] == str(out)
    code, stdout, err = run_cli(capsys, "fit", "--profile", str(devices["a"]), "--backend", "torch",
                                "--transfer-from", str(devices["source"]), "--out", str(tmp_path / "d.json"))  # fmt: skip
    assert code == 2 and err.startswith("error: --transfer-from") and "nothing to transfer" in err and err.count("\n") == 1
