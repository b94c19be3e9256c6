"""The search core on a synthetic problem whose Pareto front is known by enumeration.

The space is the 4-layer test space (336 distinct sub-networks); "error" is an analytic
function of the widths and depth (each layer matters more the deeper it is), size is the
real analytic fp16 size. The true front comes from evaluating every sub-network.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from conftest import SMALL_CONFIG, SMALL_SPACE
from llamanas_deploy.errors import BadInputError
from llamanas_deploy.model.families import ModelShape
from llamanas_deploy.search import ObjectiveSet, SearchSettings, SizeObjective, run_search
from llamanas_deploy.search.problem import canonical_genes
from llamanas_deploy.search.session import Normalization, pareto_indices
from llamanas_deploy.space import space_from_dict
from llamanas_deploy.subnet_config import SubnetConfig, read_subnet_arg

SPACE = space_from_dict(SMALL_SPACE, "small-test")
SIZE = SizeObjective(ModelShape.from_config_dict(SMALL_CONFIG, "small"))


class Interrupted(Exception):
    pass


class SyntheticError:
    """An 'expensive' objective with a known law; counts calls and can fail after `fail_after`."""

    name, direction, expensive = "error", "min", True

    def __init__(self, fail_after: int | None = None):
        self.calls: list[str] = []
        self.fail_after = fail_after

    def evaluate(self, configs):
        if self.fail_after is not None and len(self.calls) + len(configs) > self.fail_after:
            raise Interrupted
        self.calls += [c.id for c in configs]
        return np.array([_error(c) for c in configs])

    def describe(self):
        return {"kind": "synthetic"}


class SyntheticLatency:
    name, direction, expensive = "decode_ms", "min", False

    def evaluate(self, configs):
        return np.array([0.5 * c.num_layers + sum(c.intermediate_sizes) / 100 for c in configs])

    def describe(self):
        return {"kind": "synthetic"}


def _error(cfg: SubnetConfig) -> float:
    return sum((i + 1) * (1 - s / 128) for i, s in enumerate(cfg.intermediate_sizes)) + 5 * (4 - cfg.num_layers)


def _all_subnets() -> list[SubnetConfig]:
    widths = SPACE.dim("intermediate_sizes").choices
    return [SubnetConfig(d, w) for d in SPACE.depth_choices for w in itertools.product(widths, repeat=d)]


def _search(tmp_path, algorithm, objectives=None, name="out", **settings):
    objectives = objectives or ObjectiveSet([SyntheticError(), SIZE], SIZE)
    defaults = dict(algorithm=algorithm, population=20, evaluations=120, seed=0, linas_inner_evaluations=1000)
    return run_search(SPACE, objectives, tmp_path / name, SearchSettings(**defaults | settings), show_progress=False)


@pytest.fixture(scope="module")
def true_front():
    configs = _all_subnets()
    F = np.column_stack([[_error(c) for c in configs], SIZE.evaluate(configs)])
    front = pareto_indices(F)
    anchors = np.column_stack([[_error(SPACE.smallest), _error(SPACE.largest)], SIZE.evaluate([SPACE.smallest, SPACE.largest])])
    return {configs[i].id for i in front}, Normalization.from_anchors(anchors).hypervolume(F[front])


def test_enumeration_matches_the_space():
    assert len(_all_subnets()) == SPACE.num_distinct == 336


@pytest.mark.parametrize("algorithm", ["nsga2", "linas"])
def test_search_finds_the_known_front(tmp_path, true_front, algorithm):
    true_ids, true_hv = true_front
    result = _search(tmp_path, algorithm)
    found = {e["subnet_id"] for e in result.front}
    assert result.evaluations == 120
    assert len(found & true_ids) >= 0.8 * len(true_ids)
    assert result.history[-1]["hypervolume"] >= 0.99 * true_hv
    # hypervolume of the archive never decreases
    hv = [h["hypervolume"] for h in result.history]
    assert hv == sorted(hv)


def test_guided_search_beats_random_at_equal_budget(tmp_path, true_front):
    true_ids, _ = true_front
    found = {a: {e["subnet_id"] for e in _search(tmp_path, a, name=a).front} & true_ids for a in ("nsga2", "random")}
    assert len(found["nsga2"]) > len(found["random"])


def test_no_subnetwork_is_evaluated_twice_and_budget_is_exact(tmp_path):
    error = SyntheticError()
    result = _search(tmp_path, "nsga2", ObjectiveSet([error, SIZE], SIZE), evaluations=97)
    assert len(error.calls) == len(set(error.calls)) == 97 == result.evaluations
    lines = (tmp_path / "out" / "evaluations.jsonl").read_text().splitlines()
    assert len(lines) == 97


@pytest.mark.parametrize("algorithm", ["nsga2", "linas", "random"])
def test_constraints_are_never_violated_by_returned_solutions(tmp_path, algorithm):
    latency = SyntheticLatency()
    objectives = ObjectiveSet([SyntheticError(), latency], SIZE, latency)
    full = latency.evaluate([SPACE.largest])[0]
    limit_ms, limit_gib = 0.6 * full, 0.8 * SIZE.evaluate([SPACE.largest])[0]
    result = _search(tmp_path, algorithm, objectives, evaluations=60, max_latency_ms=limit_ms, max_size_gib=limit_gib)
    assert result.front, "some feasible sub-networks exist and were found"
    for entry in result.front:
        assert entry["objectives"]["decode_ms"] <= limit_ms
        assert entry["objectives"]["fp16_gib"] <= limit_gib
    # the limits were binding: the archive holds infeasible sub-networks too
    rows = (tmp_path / "out" / "evaluations.csv").read_text().splitlines()
    assert any(row.endswith("False,False") for row in rows[1:])


def test_front_file_feeds_read_subnet_arg(tmp_path):
    result = _search(tmp_path, "random", evaluations=40)
    front_file = tmp_path / "out" / "front.json"
    data = json.loads(front_file.read_text())
    assert data["space_id"] == SPACE.id and data["schema_version"] == 1
    assert [o["name"] for o in data["objectives"]] == ["error", "fp16_gib"]
    for i, entry in enumerate(result.front):
        cfg = read_subnet_arg(f"{front_file}#{i}")
        assert cfg.id == entry["subnet_id"] == SPACE.validate(cfg).id
    # fastest / smallest first
    sizes = [e["objectives"]["fp16_gib"] for e in data["front"]]
    assert sizes == sorted(sizes)


@pytest.mark.parametrize("algorithm", ["nsga2", "linas", "random"])
def test_resume_after_interruption_spends_no_evaluation_twice(tmp_path, algorithm):
    reference = _search(tmp_path, algorithm, name="reference", evaluations=70)

    first = SyntheticError(fail_after=33)
    with pytest.raises(Interrupted):
        _search(tmp_path, algorithm, ObjectiveSet([first, SIZE], SIZE), evaluations=70)
    assert len((tmp_path / "out" / "evaluations.jsonl").read_text().splitlines()) == 33

    second = SyntheticError()
    resumed = _search(tmp_path, algorithm, ObjectiveSet([second, SIZE], SIZE), evaluations=70)
    assert not set(first.calls) & set(second.calls)
    assert len(first.calls) + len(second.calls) == 70 == resumed.evaluations
    assert resumed.measured_now == 37
    # the resumed search is the search that was never interrupted
    assert [e["subnet_id"] for e in resumed.front] == [e["subnet_id"] for e in reference.front]
    assert resumed.history == reference.history


def test_truncated_last_ledger_line_is_dropped_and_remeasured(tmp_path):
    _search(tmp_path, "random", evaluations=30)
    ledger = tmp_path / "out" / "evaluations.jsonl"
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text("".join(lines[:-1]) + lines[-1][:25])
    error = SyntheticError()
    result = _search(tmp_path, "random", ObjectiveSet([error, SIZE], SIZE), evaluations=30)
    assert len(error.calls) == 1 and result.evaluations == 30


def test_corrupt_ledger_line_is_bad_input(tmp_path):
    _search(tmp_path, "random", evaluations=10)
    ledger = tmp_path / "out" / "evaluations.jsonl"
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text(lines[0] + "{not json}\n" + "".join(lines[1:]))
    with pytest.raises(BadInputError, match=r"evaluations.jsonl:2: not valid JSON"):
        _search(tmp_path, "random", evaluations=10)


def test_other_settings_in_the_same_out_dir_are_refused(tmp_path):
    _search(tmp_path, "random", evaluations=10)
    before = (tmp_path / "out" / "evaluations.jsonl").read_text()
    with pytest.raises(BadInputError, match="different settings.*seed"):
        _search(tmp_path, "random", evaluations=10, seed=1)
    with pytest.raises(BadInputError, match="different settings.*algorithm"):
        _search(tmp_path, "nsga2", evaluations=10)
    assert (tmp_path / "out" / "evaluations.jsonl").read_text() == before


def test_non_search_out_dir_is_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(BadInputError, match="not a search directory"):
        _search(tmp_path, "random", evaluations=10)


def test_max_latency_needs_a_latency_objective(tmp_path):
    with pytest.raises(BadInputError, match="--max-latency needs a latency objective"):
        _search(tmp_path, "nsga2", evaluations=10, max_latency_ms=1.0)


def test_duplicates_are_judged_by_subnetwork_not_by_unused_genes():
    genes = SPACE.encode(SubnetConfig(2, (32, 64)))
    other = genes.copy()
    other[3:5] = [3, 2]  # genes of layers 2 and 3, which a 2-layer sub-network drops
    canon = canonical_genes(SPACE, np.array([genes, other], dtype=float))
    assert (canon[0] == canon[1]).all()
    assert SPACE.decode(other) == SPACE.decode(genes)


def test_hypervolume_reference_point_is_recorded(tmp_path):
    _search(tmp_path, "random", evaluations=20)
    hv = json.loads((tmp_path / "out" / "hypervolume.json").read_text())
    assert hv["objectives"] == ["error", "fp16_gib"]
    assert hv["reference_point_normalized"] == [1.1, 1.1]
    full_size = SIZE.evaluate([SPACE.largest])[0]
    small_size = SIZE.evaluate([SPACE.smallest])[0]
    assert hv["reference_point"][1] == pytest.approx(small_size + 1.1 * (full_size - small_size))
    assert [h["evaluations"] for h in hv["history"]] == [20]
