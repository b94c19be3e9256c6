"""`run_search`: one search from objectives to output directory, resumable.

The output directory holds `search.json` (the settings, written first), the ledger
`evaluations.jsonl` (appended as sub-networks are measured) and the result files. Running
again with the same settings resumes; with other settings it is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..errors import BadInputError
from ..space import SearchSpace
from .algorithms import ALGORITHMS, LINAS_INNER_EVALUATIONS
from .ledger import Ledger
from .objectives import Objective, ObjectiveSet
from .results import write_outputs
from .session import Constraint, SearchSession

SETTINGS_SCHEMA_VERSION = 1
SETTINGS_FILE, LEDGER_FILE = "search.json", "evaluations.jsonl"


@dataclass(frozen=True)
class SearchSettings:
    algorithm: str = "nsga2"
    population: int = 50
    evaluations: int = 250
    seed: int = 0
    max_latency_ms: float | None = None
    max_size_gib: float | None = None
    linas_inner_evaluations: int = LINAS_INNER_EVALUATIONS

    def check(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise BadInputError(f"--algorithm '{self.algorithm}' is not one of {sorted(ALGORITHMS)}")
        if self.population < 2 or self.evaluations < 2:
            raise BadInputError(
                f"--population and --evaluations must be >= 2, got {self.population} and {self.evaluations}"
            )


@dataclass
class SearchResult:
    out_dir: Path
    space_id: str
    settings: SearchSettings
    evaluations: int  # sub-networks evaluated by the search
    measured_now: int  # of those, measured in this run (the others came from the ledger)
    front: list[dict[str, Any]]
    history: list[dict[str, Any]]
    summary: list[str]
    full: dict[str, Any]
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["out_dir"] = str(self.out_dir)
        return out


def run_search(
    space: SearchSpace,
    objective_set: ObjectiveSet,
    out_dir: str | Path,
    settings: SearchSettings = SearchSettings(),
    show_progress: bool = True,
) -> SearchResult:
    """Search `space`, spending `settings.evaluations` real evaluations; resumes an interrupted run in `out_dir`."""
    settings.check()
    out = Path(out_dir)
    constraints = _constraints(settings, objective_set)
    identity = _identity(space, objective_set, constraints, settings)
    _prepare_out_dir(out, identity)
    ledger = Ledger(out / LEDGER_FILE, space, objective_set.measures())
    already = len(ledger)
    session = SearchSession(space, objective_set.objectives, constraints, ledger, settings.evaluations, show_progress)
    try:
        run = ALGORITHMS[settings.algorithm]
        kwargs = {"inner_evaluations": settings.linas_inner_evaluations} if settings.algorithm == "linas" else {}
        run(session, settings.population, settings.seed, **kwargs)
    finally:
        session.close()
    report = write_outputs(
        out, session, identity, space.largest.id, objective_set.size.name, objective_set.latency, objective_set.accuracy
    )
    return SearchResult(
        out_dir=out,
        space_id=space.id,
        settings=settings,
        evaluations=session.spent,
        measured_now=len(ledger) - already,
        front=report["front"],
        history=session.history,
        summary=report["summary"],
        full=report["full"],
        files=sorted(p.name for p in out.iterdir() if not p.name.startswith(".")),
    )


def _constraints(settings: SearchSettings, objective_set: ObjectiveSet) -> list[Constraint]:
    constraints = []
    if settings.max_latency_ms is not None:
        latency = objective_set.latency
        if latency is None or not latency.name.endswith("_ms"):
            raise BadInputError("--max-latency needs a latency objective predicting milliseconds (latency:PREDICTOR)")
        constraints.append(Constraint(latency, float(settings.max_latency_ms)))
    if settings.max_size_gib is not None:
        constraints.append(Constraint(objective_set.size, float(settings.max_size_gib)))
    return constraints


def _identity(
    space: SearchSpace, objective_set: ObjectiveSet, constraints: Sequence[Constraint], settings: SearchSettings
) -> dict[str, Any]:
    """Everything that makes two searches the same search."""

    def describe(m: Objective) -> dict[str, Any]:
        return {"name": m.name, "direction": m.direction, "expensive": m.expensive, **m.describe()}

    return {
        "schema_version": SETTINGS_SCHEMA_VERSION,
        "space_id": space.id,
        **{k: v for k, v in asdict(settings).items() if k not in ("max_latency_ms", "max_size_gib")},
        "objectives": [o.name for o in objective_set.objectives],
        "constraints": [c.to_dict() for c in constraints],
        "measures": [describe(m) for m in objective_set.measures()],
    }


def _prepare_out_dir(out: Path, identity: dict[str, Any]) -> None:
    settings_file = out / SETTINGS_FILE
    if settings_file.is_file():
        try:
            saved = json.loads(settings_file.read_text())
        except json.JSONDecodeError as err:
            raise BadInputError(f"{settings_file}: not valid JSON ({err.msg}); not resuming from it") from None
        # JSON round trip, so tuples and lists compare equal
        differ = sorted(k for k in identity.keys() | saved.keys() if saved.get(k) != json.loads(json.dumps(identity)).get(k))
        if differ:
            raise BadInputError(
                f"--out {out}: holds a search with different settings ({', '.join(differ)} differ); "
                "use another --out, or the same settings to resume it"
            )
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"--out {out}: exists and is not a search directory; refusing to write into it")
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{SETTINGS_FILE}.tmp"
    tmp.write_text(json.dumps(identity, indent=1) + "\n")
    os.replace(tmp, settings_file)
