"""End to end: `llamanas run` on the embedded default with a reduced budget.

Real stages throughout: the shipped (or a freshly measured) profile, an XGBoost fit, a pymoo
search with real perplexity evaluations, a real ONNX export with int8 quantization, verified
and benchmarked, and the exported model run through ONNX Runtime.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from llamanas_deploy.analytics import subnet_stats
from llamanas_deploy.model.families import read_shape
from llamanas_deploy.space import load_space
from llamanas_deploy.subnet_config import SubnetConfig

# a budget every sub-network meets: which ones a budget relative to the noisy, tiny deployed-format
# profile admits is up to the machine's noise (`test_choose_*` checks the budget rule itself)
# and figures never flagged: what the fits can use must not depend on the machine's noise
RUN_ARGS = ["--population", "6", "--evaluations", "12", "--eval-tokens", "256", "--samples", "12", "--visits", "2",
            "--max-cv", "1000", "--max-latency", "1000", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    done = subprocess.run(
        [sys.executable, "-m", "llamanas_deploy", "run", "--out", str(out), *RUN_ARGS, "--json"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (out / "stdout.json").write_text(done.stdout)
    return out


@pytest.fixture(scope="module")
def summary(run_dir: Path) -> dict:
    printed = json.loads((run_dir / "stdout.json").read_text())
    assert printed == json.loads((run_dir / "summary.json").read_text())
    return printed


def test_every_stage_left_its_files(run_dir: Path, summary: dict):
    for name in ("run.json", "summary.json", "predictor-decode_ms.json", "search/front.json",
                 "search/evaluations.jsonl", "search/front.png", "artifact/model.onnx",
                 "artifact/manifest.json", "artifact/genai_config.json", "artifact/tokenizer.json"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    assert set(summary["files"]) >= {"run.json", "search/front.json", "artifact/manifest.json"}


def test_summary_and_manifest_agree(run_dir: Path, summary: dict):
    space = load_space("tiny")
    shape = read_shape("tiny")
    full, chosen = summary["rows"]
    manifest = json.loads((run_dir / "artifact" / "manifest.json").read_text())
    chosen_cfg = space.validate(SubnetConfig.from_dict(chosen["subnet"]))
    assert full["subnet_id"] == space.largest.id
    assert manifest["subnet_id"] == chosen["subnet_id"] == chosen_cfg.id
    assert chosen["params"] == subnet_stats(shape, chosen_cfg).params
    assert summary["ratios"]["smaller_params"] == pytest.approx(full["params"] / chosen["params"])
    assert chosen["predicted_decode_ms"] <= summary["latency_budget_ms"] * (1 + 1e-9)
    assert manifest["predicted"]["value"] == pytest.approx(chosen["predicted_decode_ms"], rel=1e-6)
    for row in summary["rows"]:
        assert row["measured_decode_ms"] > 0 and row["throughput_tok_s"] > 0
        # like for like: with a drift-corrected predictor (the deployed-format profile has anchors; None when noise
        # flagged them) the winner was measured beside the anchor too
        like_for_like = row["measured_decode_ms"] * (summary["speed_factor"] or 1.0)
        assert row["measured_decode_ms_at_profile_speed"] == pytest.approx(like_for_like)
        error = 100 * (row["predicted_decode_ms"] - like_for_like) / like_for_like
        assert row["prediction_error_pct"] == pytest.approx(error)
    fp32 = manifest["verification"]["quantized_vs_fp32"]["perplexity_fp32"]
    assert chosen["heldout_perplexity"] == pytest.approx(fp32, rel=1e-4)  # torch and ORT fp32, same tokens
    delta = summary["ratios"]["heldout_perplexity_delta"]
    assert delta == pytest.approx(chosen["heldout_perplexity"] - full["heldout_perplexity"])
    # every member meets the budget, so the chosen is the front's most accurate by the search's own measure (on the
    # 4,096 held-out tokens a sub-network of the toy super-network may beat the full one by a hair, or not)
    front = json.loads((run_dir / "search" / "front.json").read_text())
    metric = summary["search_accuracy_metric"]
    best = min(member["objectives"][metric] for member in front["front"])
    assert chosen[f"search_{metric}"] == pytest.approx(best)


def test_artifact_files_match_their_hashes_and_run(run_dir: Path):
    artifact = run_dir / "artifact"
    manifest = json.loads((artifact / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((artifact / name).read_bytes()).hexdigest() == digest, name
    done = subprocess.run(
        [sys.executable, "-m", "llamanas_deploy", "generate", "--artifact", str(artifact),
         "--prompt", "The for statement", "--max-new-tokens", "8"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_rerun_reuses_every_stage_and_other_settings_are_refused(run_dir: Path, summary: dict):
    again = subprocess.run(
        [sys.executable, "-m", "llamanas_deploy", "run", "--out", str(run_dir), *RUN_ARGS, "--json"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert "reusing" in again.stderr
    assert json.loads(again.stdout)["rows"][1]["subnet_id"] == summary["rows"][1]["subnet_id"]
    other = subprocess.run(
        [sys.executable, "-m", "llamanas_deploy", "run", "--out", str(run_dir), "--seed", "1", *RUN_ARGS],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert other.returncode == 2
    assert other.stderr.strip().count("\n") == 0 and "other settings (seed)" in other.stderr


def test_the_search_predicts_the_deployed_format_transferred_from_the_profiled_backend(run_dir: Path, summary: dict):
    predictor = summary["predictor"]
    assert (predictor["backend"], predictor["precision"]) == ("onnxruntime", "int8")
    assert predictor["transfer"]["kind"] == "format" and predictor["transfer"]["backend"] == "torch"
    deployed = summary["deployed"]
    assert deployed["predictor"] == predictor["file"] and not deployed["reused"]
    # measured with this exporter, in the run: all 8 planned sub-networks are recorded, and the fit used them all
    records = (run_dir / "profile-deployed" / "measurements.jsonl").read_text().splitlines()
    planned = [json.loads(line) for line in records if json.loads(line).get("role") != "anchor"]
    assert len({record["subnet_id"] for record in planned}) == 8 and deployed["n_subnets"] == 8
    manifest = json.loads((run_dir / "artifact" / "manifest.json").read_text())
    assert (manifest["predicted"]["backend"], manifest["predicted"]["precision"]) == ("onnxruntime", "int8")
    assert manifest["measured"]["vs_predicted"]["same_setup"] is True


def test_a_new_device_transfers_another_devices_shipped_predictor(monkeypatch):
    from llamanas_deploy.errors import BadInputError
    from llamanas_deploy.loop import RunSettings
    from llamanas_deploy.predict.transfer import find_transfer_source
    from llamanas_deploy.profiler import find_matching_profile, fingerprint

    monkeypatch.setattr(fingerprint, "current_fingerprint", lambda: {"fingerprint_id": "0123456789abcdef", "device": {}})
    space = load_space("tiny")
    setup = {"backend": "torch", "precision": "fp32", "device": "cpu", "threads": 1, "clock": "cpu"}  # RunSettings()'s
    assert find_matching_profile(space, "decode_ms", **setup, min_subnets=RunSettings().min_profile_subnets) is None
    source = find_transfer_source(space, "decode_ms", **setup)
    assert source is not None and source["backend"] == "torch" and source["metric"] == "decode_ms"
    assert find_transfer_source(space, "decode_ms", **(setup | {"threads": 2})) is None  # no predictor at 2 threads
    with pytest.raises(BadInputError) as err:
        RunSettings(deployed_samples=3)
    assert err.value.param == "deployed_samples"


def test_choose_takes_the_most_accurate_member_within_the_budget():
    from llamanas_deploy.errors import BadInputError
    from llamanas_deploy.search import FrontMember, choose

    def member(layers: int, ppl: float, ms: float) -> FrontMember:
        return FrontMember(SubnetConfig(layers, (64,) * layers), {"perplexity": ppl, "decode_ms": ms})

    front = [member(4, 10.0, 2.0), member(3, 12.0, 1.0), member(2, 15.0, 0.5)]
    assert choose(front, "perplexity", "min", "decode_ms", 1.5).subnet.num_layers == 3
    assert choose(front, "perplexity", "min", "decode_ms", 2.0).subnet.num_layers == 4
    with pytest.raises(BadInputError, match="latency budget of 0.400 ms") as err:
        choose(front, "perplexity", "min", "decode_ms", 0.4)
    assert err.value.param == "max_latency_ms"
