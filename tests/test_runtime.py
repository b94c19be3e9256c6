"""The ORT-only runtime and the export's small decisions: sampling, perplexity arithmetic,
quantization settings, manifest checks, comparison with a prediction; and the profiler's
`onnxruntime` backend measuring a real exported sub-network."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llamanas_deploy.errors import BadInputError
from llamanas_deploy.onnx_model.artifact import KIND, SCHEMA_VERSION, read_manifest, write_manifest
from llamanas_deploy.export.measure import compare_with_prediction
from llamanas_deploy.onnx_model.quantize import int4_settings, int8_settings
from llamanas_deploy.runtime import Sampling, _nll, pick_token


def test_int8_settings_follow_the_cpu():
    plain = int8_settings(["sse4_2", "avx2", "fma"])
    assert plain.per_channel and plain.reduce_range and "lacks VNNI" in plain.reason
    for flag in ("avx512_vnni", "avx_vnni", "amx_int8"):
        vnni = int8_settings(["avx2", flag])
        assert not vnni.per_channel and not vnni.reduce_range and flag in vnni.reason


def test_int4_settings_defaults_and_bad_values():
    cpu = int4_settings("cpu")
    assert (cpu.block_size, cpu.accuracy_level) == (128, 4) and "defaults for cpu" in cpu.reason
    given = int4_settings("cpu", block_size=128, accuracy_level=0)
    assert (given.block_size, given.accuracy_level) == (128, 0) and "given" in given.reason
    with pytest.raises(BadInputError, match="block_size: 48: expected one of") as err:
        int4_settings("cpu", block_size=48)
    assert err.value.param == "block_size"
    with pytest.raises(BadInputError, match="accuracy_level: 9: expected one of") as err:
        int4_settings("cpu", accuracy_level=9)
    assert err.value.param == "accuracy_level"


def test_nll_matches_log_softmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 30  # large values: needs the max shift
    targets = rng.integers(0, 11, (2, 5))
    expected = 0.0
    for b in range(2):
        for t in range(5):
            row = logits[b, t].astype(np.float64)
            expected -= row[targets[b, t]] - (row.max() + math.log(np.exp(row - row.max()).sum()))
    assert _nll(logits, targets) == pytest.approx(expected, rel=1e-12)


def test_sampling_stays_in_top_k_and_validates():
    logits = np.arange(50, dtype=np.float32)
    rng = np.random.default_rng(0)
    picks = {pick_token(logits, Sampling(temperature=5.0, top_k=3), rng) for _ in range(300)}
    assert picks == {47, 48, 49}
    assert pick_token(logits, Sampling(), rng) == 49
    with pytest.raises(BadInputError, match="temperature: must be >= 0") as err:
        Sampling(temperature=-1.0)
    assert err.value.param == "temperature"


def test_compare_with_prediction():
    measured = {"decode_ms": {"median": 4.0}, "backend": "onnxruntime", "precision": "int8", "threads": 1,
                "fingerprint_id": "abc"}  # fmt: skip
    predicted = {"metric": "decode_ms", "value": 5.0, "backend": "onnxruntime", "precision": "int8", "threads": 1,
                 "fingerprint_id": "abc"}  # fmt: skip
    result = compare_with_prediction(measured, predicted)
    assert result["error_pct"] == pytest.approx(25.0) and result["same_setup"]
    other = compare_with_prediction(measured, predicted | {"backend": "torch"})
    assert not other["same_setup"]


def test_manifest_problems_are_one_line_bad_input(tmp_path):
    import hashlib

    def seal(text: str) -> None:  # what an editor who also recomputes manifest.sha256 does
        (tmp_path / "manifest.json").write_text(text)
        (tmp_path / "manifest.sha256").write_text(f"{hashlib.sha256(text.encode()).hexdigest()}  manifest.json\n")

    with pytest.raises(BadInputError, match="no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BadInputError, match="manifest.sha256: missing"):
        read_manifest(tmp_path)
    seal("{not json")
    with pytest.raises(BadInputError, match="not valid JSON"):
        read_manifest(tmp_path)
    seal(json.dumps({"kind": "other"}))
    with pytest.raises(BadInputError, match="not a llamanas artifact manifest"):
        read_manifest(tmp_path)
    (tmp_path / "model.onnx").write_bytes(_empty_graph())
    write_manifest(tmp_path, {"precision": "fp32"})
    with pytest.raises(BadInputError, match="missing field"):
        read_manifest(tmp_path)
    fields = {"subnet": {}, "subnet_id": "x", "precision": "fp32", "device": "cpu", "onnx": {"file": "model.onnx"},
              "size": {}, "verification": {}}  # fmt: skip
    write_manifest(tmp_path, fields)
    assert read_manifest(tmp_path)["kind"] == KIND and read_manifest(tmp_path)["schema_version"] == SCHEMA_VERSION
    (tmp_path / "model.onnx").write_bytes(b"weights")
    write_manifest(tmp_path, fields)
    with pytest.raises(BadInputError, match="model.onnx: not a readable ONNX model"):
        read_manifest(tmp_path)
    (tmp_path / "model.onnx").write_bytes(_empty_graph())
    write_manifest(tmp_path, fields)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(manifest | {"precision": "int4"}))
    with pytest.raises(BadInputError, match="does not match manifest.sha256"):
        read_manifest(tmp_path)
    (tmp_path / "model.onnx").unlink()
    seal(json.dumps(manifest))
    with pytest.raises(BadInputError, match="listed in manifest.json but missing"):
        read_manifest(tmp_path)
    seal(json.dumps(manifest | {"files": {"../outside.onnx": "0" * 64}}))
    with pytest.raises(BadInputError, match="not a plain relative path"):
        read_manifest(tmp_path)
    seal(json.dumps(manifest | {"schema_version": 1}))
    with pytest.raises(BadInputError, match="schema_version 1, expected 2"):
        read_manifest(tmp_path)


def _empty_graph() -> bytes:
    from onnx import helper

    return helper.make_model(helper.make_graph([], "empty", [], [])).SerializeToString()


def test_onnxruntime_backend_measures_an_exported_subnet(small_checkpoint):
    from llamanas_deploy.profile.backends import get_backend
    from llamanas_deploy.profile.base import Shapes
    from llamanas_deploy.profile.stats import Protocol
    from llamanas_deploy.subnet_config import SubnetConfig

    backend_cls = get_backend("onnxruntime")
    backend_cls.validate("cpu", "int4")
    backend = backend_cls(small_checkpoint, "int4", "cpu", threads=1)
    subnet = SubnetConfig(2, (128, 32))
    shapes = Shapes(batch_size=2, prompt_len=8, context_len=8, gen_len=3)
    backend.warm_up(subnet, shapes)
    result = backend.measure(subnet, shapes, Protocol(warmup=0, repeats=3, max_attempts=1))
    assert backend.exports_made == 1  # exported once, reused by warm-up and measurement
    assert result.weights == "checkpoint" and result.model_bytes > 0
    for figure in (result.prefill_ms, result.decode_ms, result.throughput_tok_s):
        assert figure.spread.median > 0 and figure.spread.n >= 3
    with pytest.raises(BadInputError, match="precision: 'bf16'") as err:
        backend_cls.validate("cpu", "bf16")
    assert err.value.param == "precision"
