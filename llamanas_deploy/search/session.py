"""One search in progress: its objectives, constraints, budget of real evaluations and history.

Every algorithm drives the same session: it hands batches of sub-networks to `evaluate`
(real measurements, through the ledger), and calls `end_generation` after each batch, which
records the archive's Pareto front size and hypervolume. Progress goes to the callback: one
event per evaluation (replayed from the ledger or measured) and a message per generation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..progress import Callback, report
from ..space import SearchSpace
from ..subnet_config import SubnetConfig, unique
from .ledger import Ledger
from .objectives import Objective, sign

HV_REFERENCE = 1.1  # in normalized objective space (see `Normalization`)


@dataclass(frozen=True)
class Constraint:
    """A pymoo inequality constraint: `measure <= limit`."""

    measure: Objective
    limit: float

    def to_dict(self) -> dict[str, Any]:
        return {"measure": self.measure.name, "max": self.limit}


@dataclass(frozen=True)
class Normalization:
    """Fixed for the whole search: objectives (to minimize) scaled so that the smallest and the
    largest sub-network span [0, 1]; the hypervolume's reference point is 1.1 in every objective."""

    ideal: np.ndarray
    nadir: np.ndarray

    @classmethod
    def from_anchors(cls, F: np.ndarray) -> "Normalization":
        return cls(F.min(axis=0), F.max(axis=0))

    def __call__(self, F: np.ndarray) -> np.ndarray:
        span = np.where(self.nadir > self.ideal, self.nadir - self.ideal, 1.0)
        return (F - self.ideal) / span

    def hypervolume(self, F: np.ndarray) -> float:
        from pymoo.indicators.hv import HV

        if len(F) == 0:
            return 0.0
        return float(HV(ref_point=np.full(F.shape[1], HV_REFERENCE))(self(F)))

    def to_dict(self, objectives: Sequence[Objective]) -> dict[str, Any]:
        span = np.where(self.nadir > self.ideal, self.nadir - self.ideal, 1.0)
        ref = self.ideal + HV_REFERENCE * span
        s = np.array([sign(o) for o in objectives])
        return {
            "objectives": [o.name for o in objectives],
            "ideal": (self.ideal * s).tolist(),
            "nadir": (self.nadir * s).tolist(),
            "reference_point": (ref * s).tolist(),
            "reference_point_normalized": [HV_REFERENCE] * len(objectives),
            "note": "normalized so that the smallest and largest sub-networks span [0, 1] per objective",
        }


class SearchSession:
    def __init__(
        self,
        space: SearchSpace,
        objectives: Sequence[Objective],
        constraints: Sequence[Constraint],
        ledger: Ledger,
        budget: int,
        callback: Callback = None,
    ):
        self.space = space
        self.objectives = list(objectives)
        self.constraints = list(constraints)
        self.ledger = ledger
        self.budget = budget
        self.visited: dict[str, SubnetConfig] = {}  # this search's trajectory, in order
        self.history: list[dict[str, Any]] = []
        self.normalization: Normalization | None = None
        self._columns = {m.name: i for i, m in enumerate(ledger.measures)}
        self.callback = callback

    # ---- budget -----------------------------------------------------------------------
    @property
    def spent(self) -> int:
        return len(self.visited)

    @property
    def remaining(self) -> int:
        return self.budget - self.spent

    # ---- evaluation ---------------------------------------------------------------------
    def evaluate(self, configs: Sequence[SubnetConfig]) -> tuple[np.ndarray, np.ndarray | None]:
        """Real evaluation (ledger first): objectives to minimize and constraint values."""
        new = [c for c in unique(configs) if c.id not in self.visited]
        if len(new) > self.remaining:
            raise RuntimeError(f"batch of {len(new)} new sub-networks exceeds the {self.remaining} evaluations left")
        self.ledger.measure(new, lambda measured: self._report(self.spent + measured))
        self.visited.update((c.id, c) for c in new)
        self._report(self.spent)  # the rest came from the ledger
        return self.split(self.ledger.values(configs))

    def split(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Measure matrix (ledger column order) -> (F to minimize, G <= 0 when feasible)."""
        F = np.column_stack([sign(o) * values[:, self._columns[o.name]] for o in self.objectives])
        if not self.constraints:
            return F, None
        G = np.column_stack([values[:, self._columns[c.measure.name]] - c.limit for c in self.constraints])
        return F, G

    def archive(self) -> tuple[list[SubnetConfig], np.ndarray, np.ndarray]:
        """Everything evaluated so far: configs, F, feasibility mask."""
        configs = list(self.visited.values())
        F, G = self.split(self.ledger.values(configs))
        feasible = np.ones(len(configs), bool) if G is None else np.all(G <= 0, axis=1)
        return configs, F, feasible

    # ---- bookkeeping --------------------------------------------------------------------
    def end_generation(self) -> dict[str, Any]:
        configs, F, feasible = self.archive()
        if self.normalization is None:
            anchors = [self.space.smallest, self.space.largest]
            self.normalization = Normalization.from_anchors(self.split(self.ledger.values(anchors))[0])
        front = pareto_indices(F[feasible])
        entry = {
            "generation": len(self.history),
            "evaluations": self.spent,
            "front_size": len(front),
            "hypervolume": self.normalization.hypervolume(F[feasible][front]),
        }
        self.history.append(entry)
        self._report(self.spent, message=(
            f"generation {entry['generation']}: {self.spent}/{self.budget} evaluations, "
            f"front {entry['front_size']}, hypervolume {entry['hypervolume']:.4f}"
        ))  # fmt: skip
        return entry

    def _report(self, done: int, message: str = "") -> None:
        report(self.callback, "search", done=done, total=self.budget, unit="subnet", message=message)


def pareto_indices(F: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of F (minimization)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    if len(F) == 0:
        return np.array([], dtype=int)
    return np.asarray(NonDominatedSorting().do(F, only_non_dominated_front=True), dtype=int)
