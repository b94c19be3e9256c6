"""Measurements on a shared machine: the anchor's drift correction, the load each record carries."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from llamanas_deploy.errors import BadInputError
from llamanas_deploy.model.families import read_shape
from llamanas_deploy.predict.dataset import load_profile_data
from llamanas_deploy.predict.train import FitSettings, fit
from llamanas_deploy.profiler.load import LoadMeter, MachineLoad
from llamanas_deploy.profiler.runner import with_anchors
from llamanas_deploy.profiler.store import ProfileWriter, current_fingerprint, read_profile
from llamanas_deploy.space import load_space
from llamanas_deploy.subnet_config import SubnetConfig

SPACE = load_space("tiny")
QUIET = {"others_cores": 0.0, "steal_pct": 0.0, "loadavg_1m": 0.1, "cpu_mhz": None, "loaded": False}
BUSY = QUIET | {"others_cores": 1.2, "loaded": True}


def true_ms(cfg: SubnetConfig) -> float:
    return 0.2 + 0.1 * cfg.num_layers + 0.0005 * sum(cfg.intermediate_sizes)


def record(fingerprint: dict, cfg: SubnetConfig, ms: float, anchor_index: int | None = None, load=QUIET) -> dict:
    figure = {"median": ms * 1.1, "best": ms, "iqr": 0.01, "cv": 0.02, "n": 10, "attempts": 1, "flagged": False}
    return {
        "schema_version": 1, "target": "t", "fingerprint_id": fingerprint["fingerprint_id"], "space_id": SPACE.id,
        "model_id": read_shape("tiny").id, "subnet": cfg.to_dict(), "subnet_id": cfg.id, "visit": 0, "backend": "torch",
        "precision": "fp32", "device": "cpu", "threads": 1, "clock": "cpu",
        "shapes": {"batch_size": 1, "prompt_len": 8, "context_len": 8, "gen_len": 4},
        "prefill_ms": figure, "decode_ms": figure, "throughput_tok_s": figure | {"best": 1e3 / ms},
        "peak_mem_mib": 10.0, "model_bytes": 1000, "flagged": False, "timestamp": "2026-01-01T00:00:00+00:00",
        "load": load, **({"role": "anchor", "anchor_index": anchor_index} if anchor_index is not None else {}),
    }  # fmt: skip


SLOW_PHASE = range(7, 20)  # lines measured while the machine ran 1.4x slower: five anchors long
SPIKE = 22  # one anchor measured during a burst of other work (1.5x), nothing around it
UNTOUCHED = (2, 3, 5, 6, 11, 12, 14, 15, 17, 18, 23, 24)  # plan lines whose neighbouring anchors share their speed


def slowdown(line: int) -> float:
    return 1.4 if line in SLOW_PHASE else 1.5 if line == SPIKE else 1.0


def drifting_profile(path, subnets: list[SubnetConfig], every: int = 2) -> dict[str, int]:
    """The schedule `with_anchors` makes, each figure slowed by the machine by `slowdown(line)`;
    returns each planned sub-network's line."""
    fingerprint = current_fingerprint()
    schedule = with_anchors([(0, c) for c in subnets], SPACE.anchor, every, first_index=0)
    with ProfileWriter.open(path, "t", fingerprint) as writer:
        for line, (_, cfg, index) in enumerate(schedule, 1):
            load = BUSY if line % 4 == 0 and index is None else QUIET
            writer.append(record(fingerprint, cfg, true_ms(cfg) * slowdown(line), index, load))
    return {cfg.id: line for line, (_, cfg, index) in enumerate(schedule, 1) if index is None}


@pytest.fixture(scope="module")
def drifting(tmp_path_factory):
    path = tmp_path_factory.mktemp("drift") / "profile"
    lines = drifting_profile(path, SPACE.sample_stratified(16, seed=0))
    assert sorted(lines.values())[:2] == [2, 3] and SPIKE not in lines.values()
    return path, lines


def test_with_anchors_brackets_every_few_visits():
    todo = [(0, c) for c in SPACE.sample_stratified(5, seed=0)]
    schedule = with_anchors(todo, SPACE.anchor, 2, first_index=7)
    assert [index for _, _, index in schedule] == [7, None, None, 10, None, None, 13, None, 15]
    assert [(v, c) for v, c, i in schedule if i is None] == todo
    assert with_anchors(todo, SPACE.anchor, 0, first_index=0) == [(0, c, None) for _, c in todo]
    assert with_anchors([], SPACE.anchor, 2, first_index=0) == []


def test_the_anchor_is_a_middle_sub_network_of_the_space():
    assert SPACE.anchor == SPACE.validate(SPACE.anchor)
    assert SPACE.smallest.num_layers < SPACE.anchor.num_layers < SPACE.largest.num_layers


def test_the_anchor_correction_cancels_a_slow_phase_and_not_a_single_slow_anchor(drifting):
    path, lines = drifting
    profile = read_profile(path)
    assert len(profile.records) == 16 and len(profile.anchors) == 9  # anchors are not training data
    corrected = load_profile_data(path, "decode_ms", SPACE)
    as_measured = load_profile_data(path, "decode_ms", SPACE, drift="none")
    untouched = [i for i, c in enumerate(corrected.configs) if lines[c.id] in UNTOUCHED]
    truth = np.array([true_ms(c) for c in corrected.configs])
    assert np.ptp((corrected.y / truth)[untouched]) == pytest.approx(0, abs=1e-9)  # one common factor: drift gone
    assert np.ptp((as_measured.y / truth)[untouched]) == pytest.approx(0.4)  # the slow phase, as measured
    anchor = corrected.anchor
    assert (anchor["method"], anchor["subnet_id"], anchor["n"]) == ("anchor", SPACE.anchor.id, 9)
    assert anchor["scale"] == pytest.approx(true_ms(SPACE.anchor))  # the machine's usual speed
    loaded = sum(r.raw["load"]["loaded"] for r in profile.records)
    assert as_measured.anchor is None and corrected.n_loaded == as_measured.n_loaded == loaded > 0
    rate = load_profile_data(path, "throughput", SPACE)  # a rate is corrected the same way round
    assert np.ptp((rate.y * truth)[untouched]) == pytest.approx(0, abs=1e-9)


def test_a_profile_without_anchors_is_fitted_as_measured(tmp_path):
    drifting_profile(tmp_path / "p", SPACE.sample_stratified(12, seed=0), every=0)
    data = load_profile_data(tmp_path / "p", "decode_ms", SPACE)
    assert data.anchor is None and data.provenance()["drift_corrected_by"] is None
    with pytest.raises(BadInputError, match="drift"):
        load_profile_data(tmp_path / "p", "decode_ms", SPACE, drift="anchors")


def test_fit_says_what_it_corrected_and_what_was_measured_under_load(drifting):
    path, _ = drifting
    result = fit(path, "decode_ms", FitSettings(learning_curve=False), space=SPACE, supernet="tiny")
    summary, metadata = result.to_dict()["data"], result.predictor.metadata_
    assert summary["drift_corrected_by"]["n"] == 9 and summary["n_loaded"] == load_profile_data(path, "decode_ms", SPACE).n_loaded
    assert metadata["drift_corrected_by"] == summary["drift_corrected_by"]
    plain = fit(path, "decode_ms", FitSettings(learning_curve=False, drift="none"), space=SPACE, supernet="tiny")
    assert plain.predictor.metadata_["drift_corrected_by"] is None
    with pytest.raises(BadInputError, match="drift"):
        FitSettings(drift="sometimes")


def test_remeasure_scores_the_profile_and_the_predictor_against_a_second_measurement(drifting):
    settings = FitSettings(learning_curve=False, remeasure=True)
    result = fit(drifting[0], "decode_ms", settings, space=SPACE)  # the built-in model the profile names
    again = result.to_dict()["data"]["remeasured"]
    assert again == result.predictor.metadata_["remeasured"]
    assert 0 <= again["n"] <= result.to_dict()["data"]["n_test"]
    for scores in (again["first_vs_again"], again["predictor_vs_again"]):  # none when noise flagged every figure
        assert scores is None if again["n"] == 0 else {"mape_pct", "within_10_pct"} <= set(scores)
        assert again["n"] == 0 or 0 <= scores["within_10_pct"] <= 100
    with pytest.raises(BadInputError, match="remeasure"):
        FitSettings(remeasure="yes")


def test_a_busy_neighbour_makes_a_measurement_loaded():
    neighbour = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass"])
    try:
        meter = LoadMeter().start()
        neighbour.wait(timeout=30)  # this process sleeps; the neighbour keeps a core busy
        load = meter.stop()
    finally:
        neighbour.kill()
    assert load.others_cores >= 0.5 and load.loaded and 0 <= load.steal_pct <= 100
    assert load.to_dict()["loaded"] is True


def test_visits_combine_to_their_worst_load():
    quiet, busy = MachineLoad(0.0, 0.0, 0.2, 2400.0), MachineLoad(1.0, 6.0, 1.5, 1800.0)
    worst = MachineLoad.worst([quiet, busy])
    assert worst == MachineLoad(1.0, 6.0, 1.5, 1800.0) and worst.loaded and not quiet.loaded
    assert MachineLoad.worst([]) == MachineLoad(None, None, None, None)


@pytest.mark.parametrize("change", [{"load": "busy"}, {"role": "reference"}])
def test_a_record_with_a_mistyped_load_or_role_is_named_by_line(tmp_path, change):
    fingerprint = current_fingerprint()
    with ProfileWriter.open(tmp_path / "p", "t", fingerprint) as writer:
        writer.append(record(fingerprint, SPACE.smallest, 1.0))
        writer.append(record(fingerprint, SPACE.largest, 2.0) | change)
    with pytest.raises(BadInputError, match=r"measurements.jsonl:2: load must be an object"):
        read_profile(tmp_path / "p")
