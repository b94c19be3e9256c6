"""`minimize(problem, algorithm, evaluations, seed, out=DIR)`: one search, resumable, as pymoo's is called.

The output directory holds `search.json` (what makes the search itself, written first), the
ledger `evaluations.jsonl` (appended as sub-networks are measured) and the result files.
Running again with the same problem, algorithm, budget and seed resumes; anything else is refused.
With `workers` (`cluster.RayWorkers`) the expensive objective is measured on Ray actors, several
sub-networks at a time; the ledger on this machine stays the one record, so the trajectory, the
front and the resume rule are those of a local search.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ContextManager, Iterator, Protocol

from ..errors import BadInputError
from ..jsonfiles import check_creatable, checked_object, dumps, lock_directory, parse_json, read_json, write_json
from ..progress import Callback
from .algorithms import Algorithm
from .ledger import Evaluate, Ledger, evaluate_here
from .problem import SearchProblem
from .results import FrontMember, write_outputs
from .session import SearchSession

SETTINGS_SCHEMA_VERSION = 1
SETTINGS_FILE, LEDGER_FILE = "search.json", "evaluations.jsonl"


class Workers(Protocol):
    """Where the expensive objective is measured (`cluster.RayWorkers`): `open(problem)` gives an
    `Evaluate` for the ledger, its workers started on first use and stopped on exit."""

    def open(self, problem: SearchProblem) -> ContextManager[Evaluate]: ...


@dataclass
class SearchResult:
    directory: Path
    space_id: str
    settings: dict[str, Any]  # algorithm, population, evaluations, seed, limits, linas_inner_evaluations
    evaluations: int  # sub-networks evaluated by the search
    measured_now: int  # of those, measured in this run (the others came from the ledger)
    front: list[FrontMember]  # fastest (or smallest) first, as in front.json
    history: list[dict[str, Any]]
    summary: list[str]
    full: dict[str, Any]
    files: list[str] = field(default_factory=list)
    objectives: list[dict[str, str]] = field(default_factory=list)  # name and direction, in order

    def to_dict(self) -> dict[str, Any]:
        """What `llamanas search --json` prints."""
        fields = asdict(self)
        out = {"out_dir": str(fields.pop("directory")), **fields}  # the key `search --json` has always printed
        out["front"] = [member.to_dict() for member in self.front]
        return out


def minimize(
    problem: SearchProblem,
    algorithm: Algorithm,
    evaluations: int = 250,
    seed: int = 0,
    *,
    out: str | Path,
    callback: Callback = None,
    workers: Workers | None = None,
) -> SearchResult:
    """Search `problem` with `algorithm`, spending `evaluations` real evaluations; results in `out`.

    An interrupted search in `out` resumes: what its ledger holds is not measured again.
    `workers` (`cluster.RayWorkers(...)`) measures the expensive objective on a Ray cluster;
    the same seed gives the same search as without it.
    """
    if isinstance(evaluations, bool) or not isinstance(evaluations, int) or evaluations < 2:
        raise BadInputError(f"expected an integer >= 2, got {evaluations!r}", param="evaluations")
    out = Path(out)
    settings = _settings(problem, algorithm, evaluations, seed)
    identity = _identity(problem, settings)
    _check_out_dir(out, identity)  # before connecting to anything
    with workers.open(problem) if workers is not None else nullcontext(evaluate_here) as evaluate, _locked(out):
        if _check_out_dir(out, identity):  # again, now that no other search can write here
            write_json(out / SETTINGS_FILE, identity, indent=1)
        ledger = Ledger(out / LEDGER_FILE, problem.space, problem.measures(), evaluate)
        already = len(ledger)
        session = SearchSession(problem.space, problem.objectives, problem.constraints, ledger, evaluations, callback)
        algorithm.run(session, seed)
        space = problem.space
        report = write_outputs(out, session, identity, space.largest.id, problem.size.name, problem.latency, problem.accuracy)
    return SearchResult(
        directory=out,
        space_id=space.id,
        settings=settings,
        evaluations=session.spent,
        measured_now=len(ledger) - already,
        front=report["front"],
        history=session.history,
        summary=report["summary"],
        full=report["full"],
        files=sorted(p.name for p in out.iterdir() if not p.name.startswith(".")),
        objectives=[{"name": o.name, "direction": o.direction} for o in problem.objectives],
    )


def _settings(problem: SearchProblem, algorithm: Algorithm, evaluations: int, seed: int) -> dict[str, Any]:
    recorded = algorithm.settings()
    return {
        "algorithm": recorded["algorithm"],
        "population": recorded["population"],
        "evaluations": evaluations,
        "seed": seed,
        "max_latency_ms": problem.max_latency_ms,
        "max_size_gib": problem.max_size_gib,
        "linas_inner_evaluations": recorded["linas_inner_evaluations"],
    }


def _identity(problem: SearchProblem, settings: dict[str, Any]) -> dict[str, Any]:
    """Everything that makes two searches the same search (the limits are in `constraints`)."""

    def describe(m) -> dict[str, Any]:
        return {"name": m.name, "direction": m.direction, "expensive": m.expensive, **m.describe()}

    return {
        "schema_version": SETTINGS_SCHEMA_VERSION,
        "space_id": problem.space.id,
        **{k: v for k, v in settings.items() if k not in ("max_latency_ms", "max_size_gib")},
        "objectives": [o.name for o in problem.objectives],
        "constraints": [c.to_dict() for c in problem.constraints],
        "measures": [describe(m) for m in problem.measures()],
    }


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """The search directory (created empty if new), held by this process alone for the block."""
    out.mkdir(parents=True, exist_ok=True)
    fd = lock_directory(out, "search")
    try:
        yield
    finally:
        os.close(fd)


def _check_out_dir(out: Path, identity: dict[str, Any]) -> bool:
    """True for a new search; False for one to resume (same settings); `BadInputError` otherwise."""
    settings_file = out / SETTINGS_FILE
    if settings_file.is_file():
        saved = checked_object(read_json(settings_file, "search settings file"), str(settings_file), "")
        fresh = parse_json(dumps(identity), str(settings_file))  # as it reads back: tuples are lists
        differ = sorted(k for k in fresh.keys() | saved.keys() if saved.get(k) != fresh.get(k))
        if differ:
            raise BadInputError(
                f"{settings_file}: records a search with different settings ({', '.join(differ)} differ); "
                "use another output directory, or the same settings to resume it",
                param="out",
            )
        return False
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out}: exists and is not a search directory; refusing to write into it", param="out")
    check_creatable(out)
    return True

