"""The search core on a synthetic problem whose Pareto front is known by enumeration.

The space is the 4-layer test space (336 distinct sub-networks); "error" is an analytic
function of the widths and depth (each layer matters more the deeper it is), size is the
real analytic fp16 size. The true front comes from evaluating every sub-network.
"""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest

from conftest import SMALL_CONFIG, SMALL_SPACE
from llamanas_deploy.errors import BadInputError
from llamanas_deploy.model.families import ModelShape
from llamanas_deploy.search import (
    ALGORITHMS, LINAS, NSGA2, ModelSize, Perplexity, RandomSearch, SearchProblem, TaskAccuracy, minimize,
    objectives_from_specs,
)  # fmt: skip
from llamanas_deploy.search.objectives import SizeMeasure
from llamanas_deploy.search.problem import canonical_genes
from llamanas_deploy.search.session import Normalization, pareto_indices
from llamanas_deploy.space import space_from_dict
from llamanas_deploy.subnet_config import SubnetConfig, read_subnet_arg

SPACE = space_from_dict(SMALL_SPACE, "small-test")
SIZE = SizeMeasure(ModelShape.from_config_dict(SMALL_CONFIG, "small"))


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


@pytest.fixture(scope="module")
def model_config(tmp_path_factory):
    """The small model's config.json alone: the size is analytic, nothing here loads weights."""
    path = tmp_path_factory.mktemp("small") / "config.json"
    path.write_text(json.dumps(SMALL_CONFIG))
    return path


@pytest.fixture
def search(tmp_path, model_config):
    def run(algorithm, objectives=None, name="out", population=20, evaluations=120, seed=0, callback=None, **limits):
        problem = SearchProblem(model_config, SPACE, objectives or [SyntheticError(), ModelSize()], **limits)
        chosen = LINAS(population, inner_evaluations=1000) if algorithm == "linas" else ALGORITHMS[algorithm](population)
        return minimize(problem, chosen, evaluations, seed, out=tmp_path / name, callback=callback)

    return run


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
def test_search_finds_the_known_front(search, true_front, algorithm):
    true_ids, true_hv = true_front
    result = search(algorithm)
    found = {m.subnet_id for m in result.front}
    assert result.evaluations == 120
    assert len(found & true_ids) >= 0.8 * len(true_ids)
    assert result.history[-1]["hypervolume"] >= 0.99 * true_hv
    # hypervolume of the archive never decreases
    hv = [h["hypervolume"] for h in result.history]
    assert hv == sorted(hv)


def test_guided_search_beats_random_at_equal_budget(search, true_front):
    true_ids, _ = true_front
    found = {a: {m.subnet_id for m in search(a, name=a).front} & true_ids for a in ("nsga2", "random")}
    assert len(found["nsga2"]) > len(found["random"])


def test_no_subnetwork_is_evaluated_twice_and_budget_is_exact(tmp_path, search):
    error = SyntheticError()
    result = search("nsga2", [error, ModelSize()], evaluations=97)
    assert len(error.calls) == len(set(error.calls)) == 97 == result.evaluations
    lines = (tmp_path / "out" / "evaluations.jsonl").read_text().splitlines()
    assert len(lines) == 97


@pytest.mark.parametrize("algorithm", ["nsga2", "linas", "random"])
def test_constraints_are_never_violated_by_returned_solutions(tmp_path, search, algorithm):
    latency = SyntheticLatency()
    objectives = [SyntheticError(), latency]
    full = latency.evaluate([SPACE.largest])[0]
    limit_ms, limit_gib = 0.6 * full, 0.8 * SIZE.evaluate([SPACE.largest])[0]
    result = search(algorithm, objectives, evaluations=60, max_latency_ms=limit_ms, max_size_gib=limit_gib)
    assert result.front, "some feasible sub-networks exist and were found"
    for member in result.front:
        assert member.objectives["decode_ms"] <= limit_ms
        assert member.objectives["fp16_gib"] <= limit_gib
    # the limits were binding: the archive holds infeasible sub-networks too
    rows = (tmp_path / "out" / "evaluations.csv").read_text().splitlines()
    assert any(row.endswith("False,False") for row in rows[1:])


def test_front_file_feeds_read_subnet_arg(tmp_path, search):
    result = search("random", evaluations=40)
    front_file = tmp_path / "out" / "front.json"
    data = json.loads(front_file.read_text())
    assert data["space_id"] == SPACE.id and data["schema_version"] == 1
    assert [o["name"] for o in data["objectives"]] == ["error", "fp16_gib"]
    assert data["front"] == [member.to_dict() for member in result.front]
    for i, member in enumerate(result.front):
        cfg = read_subnet_arg(f"{front_file}#{i}")
        assert cfg == member.subnet and cfg.id == member.subnet_id == SPACE.validate(member).id
    # fastest / smallest first
    sizes = [e["objectives"]["fp16_gib"] for e in data["front"]]
    assert sizes == sorted(sizes)


@pytest.mark.parametrize("algorithm", ["nsga2", "linas", "random"])
def test_resume_after_interruption_spends_no_evaluation_twice(tmp_path, search, algorithm):
    reference = search(algorithm, name="reference", evaluations=70)

    first = SyntheticError(fail_after=33)
    with pytest.raises(Interrupted):
        search(algorithm, [first, ModelSize()], evaluations=70)
    assert len((tmp_path / "out" / "evaluations.jsonl").read_text().splitlines()) == 33

    second = SyntheticError()
    resumed = search(algorithm, [second, ModelSize()], evaluations=70)
    assert not set(first.calls) & set(second.calls)
    assert len(first.calls) + len(second.calls) == 70 == resumed.evaluations
    assert resumed.measured_now == 37
    # the resumed search is the search that was never interrupted
    assert [m.subnet_id for m in resumed.front] == [m.subnet_id for m in reference.front]
    assert resumed.history == reference.history


def test_truncated_last_ledger_line_is_dropped_and_remeasured(tmp_path, search):
    search("random", evaluations=30)
    ledger = tmp_path / "out" / "evaluations.jsonl"
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text("".join(lines[:-1]) + lines[-1][:25])
    error = SyntheticError()
    result = search("random", [error, ModelSize()], evaluations=30)
    assert len(error.calls) == 1 and result.evaluations == 30


def test_corrupt_ledger_line_is_bad_input(tmp_path, search):
    search("random", evaluations=10)
    ledger = tmp_path / "out" / "evaluations.jsonl"
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text(lines[0] + "{not json}\n" + "".join(lines[1:]))
    with pytest.raises(BadInputError, match=r"evaluations.jsonl:2: not valid JSON"):
        search("random", evaluations=10)


def test_a_refused_ledger_is_left_exactly_as_it_was(tmp_path, search):
    """A line of another space and a torn last line: refused, and the torn tail is not cut meanwhile."""
    search("random", evaluations=10)
    ledger = tmp_path / "out" / "evaluations.jsonl"
    lines = ledger.read_text().splitlines(keepends=True)
    foreign = json.loads(lines[0]) | {"space_id": "other-00000000"}
    ledger.write_text(json.dumps(foreign) + "\n" + "".join(lines[1:]) + lines[0][:25])
    before = ledger.read_bytes()
    with pytest.raises(BadInputError, match=r"evaluations.jsonl:1: expected an evaluation record of space"):
        search("random", evaluations=10)
    assert ledger.read_bytes() == before


def test_a_search_directory_another_process_is_writing_is_refused(tmp_path, search):
    from llamanas_deploy.jsonfiles import lock_directory

    search("random", evaluations=10)
    fd = lock_directory(tmp_path / "out", "search")  # as a concurrent search holds it
    try:
        with pytest.raises(BadInputError, match="another process is writing this search right now"):
            search("random", evaluations=10)
    finally:
        os.close(fd)
    assert search("random", evaluations=10).evaluations == 10


def test_other_settings_in_the_same_out_dir_are_refused(tmp_path, search):
    search("random", evaluations=10)
    before = (tmp_path / "out" / "evaluations.jsonl").read_text()
    with pytest.raises(BadInputError, match="different settings.*seed"):
        search("random", evaluations=10, seed=1)
    with pytest.raises(BadInputError, match="different settings.*algorithm"):
        search("nsga2", evaluations=10)
    assert (tmp_path / "out" / "evaluations.jsonl").read_text() == before


def test_non_search_out_dir_is_refused(tmp_path, search):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(BadInputError, match="not a search directory"):
        search("random", evaluations=10)


def test_max_latency_needs_a_latency_objective(search):
    with pytest.raises(BadInputError, match="max_latency_ms: needs a latency objective"):
        search("nsga2", evaluations=10, max_latency_ms=1.0)


def test_duplicates_are_judged_by_subnetwork_not_by_unused_genes():
    genes = SPACE.encode(SubnetConfig(2, (32, 64)))
    other = genes.copy()
    other[3:5] = [3, 2]  # genes of layers 2 and 3, which a 2-layer sub-network drops
    canon = canonical_genes(SPACE, np.array([genes, other], dtype=float))
    assert (canon[0] == canon[1]).all()
    assert SPACE.decode(other) == SPACE.decode(genes)


def test_hypervolume_reference_point_is_recorded(tmp_path, search):
    search("random", evaluations=20)
    hv = json.loads((tmp_path / "out" / "hypervolume.json").read_text())
    assert hv["objectives"] == ["error", "fp16_gib"]
    assert hv["reference_point_normalized"] == [1.1, 1.1]
    full_size = SIZE.evaluate([SPACE.largest])[0]
    small_size = SIZE.evaluate([SPACE.smallest])[0]
    assert hv["reference_point"][1] == pytest.approx(small_size + 1.1 * (full_size - small_size))
    assert [h["evaluations"] for h in hv["history"]] == [20]


# ---- the pymoo-style API --------------------------------------------------------------------

# fronts of the pre-objects API (run_search with SearchSettings(ALG, 10, 40, 3, linas_inner_evaluations=500))
REFERENCE_FRONTS = {
    "nsga2": "a4c86fcf2171 cbbff733df46 bf6f09edb0fc eb446efaad4f 855c2a631f5d 7cdebb8cbbbb 1058696f70a6 "
    "4407db2503f8 65d92e08a5b5 9fd4409602cd 91fc4bd9df56 33158a35fe0c 0e329499bff2 bfb251b59618 e0f8f7a8f8b0 "
    "40319bcb3759 f482151fe3df 2530c9aee64f aa79dee78095 47bdfb197421",
    "linas": "a4c86fcf2171 3ed308ac5cd4 bf6f09edb0fc a0f403b0bcf9 855c2a631f5d e8e082c13275 1058696f70a6 "
    "9fd4409602cd 91fc4bd9df56 64b913b6e08c 3fb3ea211824 bfb251b59618 40319bcb3759 1cec4efd357c 2530c9aee64f "
    "f00d238b38d4 47bdfb197421",
    "random": "a4c86fcf2171 cbbff733df46 bf6f09edb0fc eb446efaad4f 9863999bde81 1cbb32b60413 da6fc40df05e "
    "7ab8f8cfb11d a8aec0e61792 9fd4409602cd 91fc4bd9df56 c07a527f8cb1 40319bcb3759 38f1cb5df2aa aa79dee78095 "
    "47bdfb197421",
}


@pytest.mark.parametrize(
    "algorithm", [NSGA2(population=10), LINAS(population=10, inner_evaluations=500), RandomSearch(population=10)],
    ids=lambda a: a.name,
)  # fmt: skip
def test_algorithm_objects_give_the_same_front_as_before(tmp_path, model_config, algorithm):
    problem = SearchProblem(model_config, SPACE, [SyntheticError(), ModelSize()])
    result = minimize(problem, algorithm, evaluations=40, seed=3, out=tmp_path / "out")
    assert [m.subnet_id for m in result.front] == REFERENCE_FRONTS[algorithm.name].split()
    assert result.settings["algorithm"] == algorithm.name and result.settings["population"] == 10


def test_algorithms_registry_and_constructor_checks():
    assert ALGORITHMS == {"nsga2": NSGA2, "linas": LINAS, "random": RandomSearch}
    assert LINAS().inner_evaluations == 5000 and NSGA2().population == RandomSearch().population == 50
    for bad in (1, 0, -3, 2.5, True):
        with pytest.raises(BadInputError, match=r"^population: expected an integer >= 2") as err:
            NSGA2(population=bad)
        assert err.value.param == "population"
    with pytest.raises(BadInputError) as err:
        LINAS(inner_evaluations=0)
    assert err.value.param == "inner_evaluations"


def test_callback_receives_progress_and_generation_events(search):
    events = []
    result = search("random", population=10, evaluations=30, callback=events.append)
    generations = [e for e in events if e.message.startswith("generation")]
    assert [e.message.split(":")[0] for e in generations] == ["generation 0", "generation 1", "generation 2"]
    assert generations[-1].message.startswith("generation 2: 30/30 evaluations, front")
    assert all(e.stage == "search" and e.total == 30 for e in events)
    assert [e.done for e in events if not e.message] == sorted(e.done for e in events if not e.message)
    assert events[-1].done == 30 == result.evaluations


@pytest.mark.parametrize("param", ["max_latency_ms", "max_size_gib"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 0, 0.0, -1.5, "fast"])
def test_problem_refuses_limits_that_are_not_finite_positive_numbers(model_config, param, value):
    latency = SyntheticLatency()
    with pytest.raises(BadInputError, match=rf"^{param}: expected a finite number > 0") as err:
        SearchProblem(model_config, SPACE, [SyntheticError(), latency], **{param: value})
    assert err.value.param == param


def test_minimize_refuses_a_budget_below_two(tmp_path, model_config):
    problem = SearchProblem(model_config, SPACE, [SyntheticError(), ModelSize()])
    with pytest.raises(BadInputError, match="^evaluations: expected an integer >= 2"):
        minimize(problem, NSGA2(), evaluations=1, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_problem_needs_two_distinct_objectives(model_config):
    with pytest.raises(BadInputError, match=r"^objectives: need at least two distinct objectives, got \['fp16_gib'\]"):
        SearchProblem(model_config, SPACE, [ModelSize()])


def test_specs_become_objective_objects():
    built = objectives_from_specs(["size"], max_tokens=64)
    assert [type(o) for o in built] == [Perplexity, ModelSize] and built[0].max_tokens == 64 and built[0].data is None
    task = objectives_from_specs(["accuracy:task", "size"], max_examples=7)[0]
    assert isinstance(task, TaskAccuracy) and task.task is None and task.max_examples == 7
    assert objectives_from_specs(["accuracy:pydoc-heldout", "size"])[0].data == "pydoc-heldout"
    for bad in ("latency", "speed:x", "size:3"):
        with pytest.raises(BadInputError, match="expected accuracy"):
            objectives_from_specs([bad])


def test_old_format_search_dir_resumes(tmp_path, search):
    """A search directory as the pre-objects API wrote it (spaced ledger lines, its search.json) resumes."""
    first = search("random", population=10, evaluations=20)
    out = tmp_path / "out"
    old_identity = {
        "schema_version": 1, "space_id": SPACE.id, "algorithm": "random", "population": 10, "evaluations": 20,
        "seed": 0, "linas_inner_evaluations": 5000, "objectives": ["error", "fp16_gib"], "constraints": [],
        "measures": [
            {"name": "error", "direction": "min", "expensive": True, "kind": "synthetic"},
            {"name": "fp16_gib", "direction": "min", "expensive": False, "kind": "analytic", "shape": SIZE.shape.__dict__},
        ],
    }  # fmt: skip
    (out / "search.json").write_text(json.dumps(old_identity, indent=1) + "\n")
    ledger = out / "evaluations.jsonl"
    ledger.write_text("".join(json.dumps(json.loads(line)) + "\n" for line in ledger.read_text().splitlines()))
    error = SyntheticError()
    resumed = search("random", [error, ModelSize()], population=10, evaluations=20)
    assert error.calls == [] and resumed.measured_now == 0
    assert resumed.front == first.front and resumed.history == first.history
