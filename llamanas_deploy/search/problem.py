"""The search problem: what is searched (`SearchProblem`), and its pymoo form over the space's genes.

`SearchProblem(supernet, space, objectives, max_latency_ms=None, max_size_gib=None)` binds the
objectives to one super-network (loaded once, and only when an objective measures on it) and
checks the space against it. The size is always recorded (the summary's "x smaller", the size
limit); a latency limit applies to the latency objective.

Gene 0 picks the depth, then one gene per layer and elastic dimension (`SearchSpace.encode`).
Genes of dropped layers do not change the sub-network, so duplicates are judged on the
canonical genes (those zeroed), i.e. by sub-network, while the genes themselves are kept
(a later mutation that deepens the network brings them back).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from ..concepts import METRICS
from ..errors import BadInputError
from ..model.families import BUILTIN_MODELS, ModelShape, read_shape
from ..space import SearchSpace, load_space
from ..subnet_config import SubnetConfig
from .objectives import Objective, SizeMeasure
from .session import Constraint

if TYPE_CHECKING:
    from ..model.supernet import SuperNetwork

DEVICE_METRICS = {m.field: m for m in METRICS.values()}  # an objective so named is the problem's latency


class SearchProblem:
    """Objectives bound to a super-network and a space, with optional limits (pymoo's `Problem`, ours)."""

    def __init__(
        self,
        supernet: SuperNetwork | str | Path,
        space: SearchSpace | str | Path,
        objectives: Sequence[Any],
        max_latency_ms: float | None = None,
        max_size_gib: float | None = None,
    ):
        self.max_latency_ms = _limit(max_latency_ms, "max_latency_ms")
        self.max_size_gib = _limit(max_size_gib, "max_size_gib")
        self.space = load_space(space)
        self._supernet, self.model, self.shape = _model(supernet)
        self.space.check_super_network(self.shape, self.model)
        self.given = list(objectives)  # as the user built them: what a remote worker binds again
        # cheap ones first: a wrong predictor is refused before the super-network is loaded
        bound = {i: _bind(o, self) for i, o in enumerate(objectives) if not o.expensive}
        bound |= {i: _bind(o, self) for i, o in enumerate(objectives) if o.expensive}
        self.objectives: list[Objective] = [bound[i] for i in range(len(objectives))]
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names) or len(names) < 2:
            raise BadInputError(f"need at least two distinct objectives, got {names}", param="objectives")
        self.size: Objective = SizeMeasure(self.shape)
        self.latency: Objective | None = next((o for o in self.objectives if o.name in DEVICE_METRICS), None)
        self.constraints = self._constraints()

    @property
    def supernet(self) -> SuperNetwork:
        """The `SuperNetwork`, loaded on first use."""
        if self._supernet is None:
            from ..model.supernet import SuperNetwork

            self._supernet = SuperNetwork.load(self.model)  # its shape was checked against the space
        return self._supernet

    @property
    def accuracy(self) -> Objective | None:
        """The first objective measured for real (perplexity, accuracy), if any."""
        return next((o for o in self.objectives if o.expensive), None)

    def measures(self) -> list[Objective]:
        """Everything recorded per sub-network: the objectives, then the latency and the size."""
        extra = [m for m in (self.latency, self.size) if m is not None]
        return list({m.name: m for m in [*self.objectives, *extra]}.values())

    def _constraints(self) -> list[Constraint]:
        constraints = []
        if self.max_latency_ms is not None:
            if self.latency is None or DEVICE_METRICS[self.latency.name].unit != "ms":
                raise BadInputError(
                    "needs a latency objective predicting milliseconds (PredictedLatency, spec latency:FILE)",
                    param="max_latency_ms",
                )
            constraints.append(Constraint(self.latency, self.max_latency_ms))
        if self.max_size_gib is not None:
            constraints.append(Constraint(self.size, self.max_size_gib))
        return constraints

    def __repr__(self) -> str:
        limits = f", max_latency_ms={self.max_latency_ms}, max_size_gib={self.max_size_gib}"
        return f"SearchProblem({self.model!r}, {self.space.id!r}, {[o.name for o in self.objectives]}{limits})"


def _limit(value: float | None, param: str) -> float | None:
    if value is None:
        return None
    try:
        limit = float(value)
    except (TypeError, ValueError):
        limit = math.nan
    if isinstance(value, bool) or not math.isfinite(limit) or limit <= 0:
        raise BadInputError(f"expected a finite number > 0, got {value!r}", param=param)
    return limit


def _model(supernet: Any) -> tuple[Any, str, ModelShape]:
    """(loaded super-network or None, how records name the model, its shape)."""
    if isinstance(supernet, (str, Path)):
        return None, str(supernet), read_shape(supernet)
    builtin = {path.resolve(): name for name, path in BUILTIN_MODELS.items()}
    return supernet, builtin.get(Path(supernet.source).resolve(), str(supernet.source)), supernet.shape


def _bind(objective: Any, problem: SearchProblem) -> Objective:
    return objective.bind(problem) if hasattr(objective, "bind") else objective


# (configs) -> (F to minimize, G <= 0 feasible or None)
BatchEvaluation = Callable[[list[SubnetConfig]], tuple[np.ndarray, np.ndarray | None]]

# The paper's settings (LLaMA-NAS, after Intel DyNAS-T)
CROSSOVER_PROB, CROSSOVER_ETA = 0.9, 15.0
MUTATION_PROB_PER_GENE, MUTATION_ETA = 0.02, 20.0


def canonical_genes(space: SearchSpace, X: np.ndarray) -> np.ndarray:
    """Rounded genes with those of dropped layers set to 0: equal rows <=> same sub-network."""
    X = np.clip(np.rint(np.asarray(X, dtype=float)), 0, space.encoding_upper_bounds).astype(np.int64)
    depth = np.asarray(space.depth_choices)[X[:, 0]]
    dropped = np.arange(space.max_layers)[None, :] >= depth[:, None]
    for k in range(len(space.layer_dims)):
        block = X[:, 1 + k * space.max_layers : 1 + (k + 1) * space.max_layers]
        block[dropped] = 0
    return X


def decode_all(space: SearchSpace, X: np.ndarray) -> list[SubnetConfig]:
    return [space.decode(x) for x in canonical_genes(space, X)]


def make_problem(space: SearchSpace, n_obj: int, n_constr: int, evaluate: BatchEvaluation):
    """A vectorized pymoo `Problem`: `evaluate` gets the whole population in one call."""
    from pymoo.core.problem import Problem

    class SubnetProblem(Problem):
        def __init__(self) -> None:
            ub = space.encoding_upper_bounds
            super().__init__(n_var=len(ub), n_obj=n_obj, n_ieq_constr=n_constr, xl=0, xu=ub, vtype=int)

        def _evaluate(self, X, out, *args, **kwargs):
            F, G = evaluate(decode_all(space, X))
            out["F"] = F
            if n_constr:
                out["G"] = G

    return SubnetProblem()


def make_nsga2(space: SearchSpace, pop_size: int, initial: Sequence[SubnetConfig]):
    """pymoo NSGA-II with the paper's operators, starting from `initial` (encoded).

    pymoo 0.6's `PM(prob=...)` is the chance that an individual is mutated at all; the paper's
    (and pymoo 0.5's) p = 0.02 is per gene, which is `prob_var` here.
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.duplicate import DefaultDuplicateElimination
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair

    return NSGA2(
        pop_size=pop_size,
        sampling=np.array([space.encode(c) for c in initial], dtype=float),
        crossover=SBX(prob=CROSSOVER_PROB, eta=CROSSOVER_ETA, vtype=float, repair=RoundingRepair()),
        mutation=PM(prob=1.0, prob_var=MUTATION_PROB_PER_GENE, eta=MUTATION_ETA, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=DefaultDuplicateElimination(func=lambda pop: canonical_genes(space, pop.get("X"))),
    )
