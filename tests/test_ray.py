"""Search and profile on a Ray cluster: a local one on this machine (2 CPUs), started by this module
and stopped at its end.

- a distributed search finds the same front as the local one for the same seed (all algorithms);
- an actor killed mid-search is replaced by Ray; the ledger loses and duplicates nothing;
- an interrupted distributed search resumes from the driver's ledger, measuring only what is missing;
- a profile through a node resource writes the records a local profile would, the fingerprint
  taken on that node; several targets profile as a fleet, each into its own directory;
- without --ray nothing imports Ray; with --ray and no Ray: one line, exit 2, naming the extra.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_cli, write_space
from llamanas_deploy.cluster import RayNode, RayWorkers
from llamanas_deploy.profiler.runner import ProfileSettings, profile
from llamanas_deploy.profiler.stats import Protocol
from llamanas_deploy.profiler.store import read_profile
from llamanas_deploy.search import LINAS, NSGA2, ModelSize, Perplexity, RandomSearch, SearchProblem, minimize

RESOURCES = {"llamanas-test-a": 1, "llamanas-test-b": 1}  # two "devices" on the one node
TOKENS = [int(i) for i in np.random.default_rng(0).integers(0, 256, 600)]
EVALUATIONS, POPULATION = 14, 6
QUICK = ProfileSettings(samples=3, protocol=Protocol(warmup=1, repeats=3, max_attempts=1, visits=1))


@pytest.fixture(scope="module")
def cluster():
    import ray

    # Ray starts its workers at nice 15: beside any other work on this 2-core machine they would crawl
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_worker_niceness", "0")
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, resources=RESOURCES)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def space_file(tmp_path_factory):
    return write_space(tmp_path_factory.mktemp("space") / "small-test.json")


@pytest.fixture(scope="module")
def problem(small_checkpoint, space_file):
    return SearchProblem(small_checkpoint, space_file, [Perplexity(TOKENS, max_tokens=256), ModelSize()])


ALGORITHMS = {
    "nsga2": NSGA2(population=POPULATION),
    "linas": LINAS(population=POPULATION, inner_evaluations=300),
    "random": RandomSearch(population=POPULATION),
}


@pytest.fixture(scope="module")
def local_runs(problem, tmp_path_factory):
    """The reference: each algorithm's search run here, without Ray."""
    out = tmp_path_factory.mktemp("local")
    return {name: minimize(problem, algorithm, EVALUATIONS, seed=0, out=out / name) for name, algorithm in ALGORITHMS.items()}


def _ledger(out) -> list[dict]:
    return [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines()]


def _same_search(result, reference) -> None:
    assert result.front == reference.front
    assert result.history == reference.history
    assert (result.directory / "evaluations.csv").read_text() == (reference.directory / "evaluations.csv").read_text()
    ledger = _ledger(result.directory)
    assert len(ledger) == len({r["subnet_id"] for r in ledger}) == reference.evaluations
    by_id = {r["subnet_id"]: r["values"] for r in _ledger(reference.directory)}
    assert {r["subnet_id"]: r["values"] for r in ledger} == by_id


@pytest.mark.parametrize("algorithm", ["linas", "random"])  # nsga2: the next test
def test_distributed_search_finds_the_local_front(cluster, problem, local_runs, algorithm, tmp_path):
    workers = RayWorkers(workers=2)
    result = minimize(problem, ALGORITHMS[algorithm], EVALUATIONS, seed=0, out=tmp_path, workers=workers)
    _same_search(result, local_runs[algorithm])
    assert result.measured_now == EVALUATIONS and workers.actors == []  # stopped at the end


class Interrupted(Exception):
    pass


def test_interrupted_then_a_worker_killed_nothing_lost_or_counted_twice(cluster, problem, local_runs, tmp_path):
    """Interrupted after 5 evaluations: the resumed search measures only the rest from the driver's
    ledger; there, a worker killed mid-search is replaced by Ray and its sub-network run again."""

    def stop(event):
        if event.done == 5 and not event.message:
            raise Interrupted

    with pytest.raises(Interrupted):
        minimize(problem, ALGORITHMS["nsga2"], EVALUATIONS, seed=0, out=tmp_path, callback=stop,
                 workers=RayWorkers(workers=2))  # fmt: skip
    kept = len(_ledger(tmp_path))
    assert kept == 5

    workers = RayWorkers(workers=2)
    pids: list[int] = []

    def kill_one(event):
        if event.done == 8 and not pids:
            victim = workers.actors[0]
            pids.append(cluster.get(victim.pid.remote()))
            cluster.kill(victim, no_restart=False)  # as if its process died; Ray restarts it
        elif event.done == EVALUATIONS - 2 and len(pids) == 1:
            pids.append(cluster.get(workers.actors[0].pid.remote()))  # the replacement's

    result = minimize(problem, ALGORITHMS["nsga2"], EVALUATIONS, seed=0, out=tmp_path, callback=kill_one,
                      workers=workers)  # fmt: skip
    assert len(pids) == 2 and pids[0] != pids[1]
    assert result.measured_now == EVALUATIONS - kept
    _same_search(result, local_runs["nsga2"])


def test_search_cli_on_ray_prints_the_local_front(cluster, capsys, tmp_path):
    common = ["search", "--model", "tiny", "--space", "tiny", "--population", "4", "--evaluations", "8",
              "--eval-tokens", "128", "--objective", "size", "--json"]  # fmt: skip
    code, out, err = run_cli(capsys, *common, "--out", str(tmp_path / "local"))
    assert code == 0, err
    code, ray_out, err = run_cli(capsys, *common, "--out", str(tmp_path / "ray"), "--ray", "auto", "--workers", "1")
    assert code == 0, err
    assert json.loads(ray_out)["front"] == json.loads(out)["front"]


def _records(directory) -> list[dict]:
    return [r.raw for r in read_profile(directory).records]


def _comparable(record: dict) -> dict:
    """A record less what a second measurement changes: the figures, the clock time, the machine's load."""
    timed = ("prefill_ms", "decode_ms", "throughput_tok_s", "load", "peak_mem_mib", "flagged", "measure_s", "timestamp")
    return {k: v for k, v in record.items() if k not in timed} | {k: sorted(record[k]) for k in timed[:4]}


def test_profile_on_a_node_resource_writes_what_a_local_profile_would(cluster, small_checkpoint, space_file, tmp_path):
    here = profile(small_checkpoint, space_file, QUICK, target="dev", out=tmp_path / "here")
    there = profile(small_checkpoint, space_file, QUICK, target="dev", out=tmp_path / "there",
                    node=RayNode("llamanas-test-a"))  # fmt: skip
    assert there.measured_now == here.measured_now == 3
    assert [_comparable(r) for r in _records(there.directory)] == [_comparable(r) for r in _records(here.directory)]
    assert read_profile(there.directory).fingerprint["fingerprint_id"] == here.fingerprint_id  # same machine here
    again = profile(small_checkpoint, space_file, QUICK, target="dev", out=tmp_path / "there", node=RayNode("llamanas-test-a"))
    assert again.measured_now == 0  # resumes from the driver's files


def test_profile_cli_fleet_each_target_in_its_own_directory(cluster, capsys, small_checkpoint, space_file, tmp_path):
    code, out, err = run_cli(
        capsys, "profile", "--model", str(small_checkpoint), "--space", str(space_file), "--samples", "2",
        "--visits", "1", "--repeats", "3", "--warmup", "1", "--attempts", "1", "--out", str(tmp_path), "--json",
        "--ray", "auto", "--target", "edge-a", "--target", "edge-b",
        "--node-resource", "llamanas-test-a", "--node-resource", "llamanas-test-b",
    )  # fmt: skip
    assert code == 0, err
    fleet = json.loads(out)["targets"]
    assert [t["target"] for t in fleet] == ["edge-a", "edge-b"]
    for name in ("edge-a", "edge-b"):
        records = _records(tmp_path / name)
        assert len(records) == 2 and {r["target"] for r in records} == {name}


def test_profile_cli_refuses_a_resource_no_node_has(cluster, capsys, small_checkpoint, space_file, tmp_path):
    code, _, err = run_cli(capsys, "profile", "--model", str(small_checkpoint), "--space", str(space_file),
                           "--target", "x", "--out", str(tmp_path / "x"), "--ray", "auto", "--node-resource", "nope")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--node-resource" in err and "'nope'" in err


def test_worker_options_need_ray_and_several_targets_need_ray(capsys, tmp_path):
    code, _, err = run_cli(capsys, "search", "--out", str(tmp_path / "s"), "--workers", "2")
    assert code == 2 and err.startswith("error: --workers:") and "--ray" in err
    code, _, err = run_cli(capsys, "profile", "--target", "a", "--target", "b")
    assert code == 2 and err.startswith("error: --target:") and "--ray" in err


def test_without_ray_installed_ray_flags_fail_in_one_line_naming_the_extra(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    for args in (["search", "--out", str(tmp_path / "s"), "--ray", "auto"], ["profile", "--target", "a", "--ray", "auto"]):
        code, out, err = run_cli(capsys, *args)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
        assert err.startswith("error: --ray:") and "llamanas-deploy[ray]" in err


def test_without_ray_flags_nothing_imports_ray():
    script = (
        "import sys; import llamanas_deploy.cli.search_cmd as s, llamanas_deploy.cli.profile_cmd as p;"
        "import llamanas_deploy.search, llamanas_deploy.profiler.runner;"
        "assert s._ray_workers(None, None, None) is None and p._nodes(('a',), None, ()) == {'a': None};"
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
