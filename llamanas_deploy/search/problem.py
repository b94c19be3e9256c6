"""The search as a pymoo problem over the space's integer encoding, and the paper's NSGA-II.

Gene 0 picks the depth, then one gene per layer and elastic dimension (`SearchSpace.encode`).
Genes of dropped layers do not change the sub-network, so duplicates are judged on the
canonical genes (those zeroed), i.e. by sub-network, while the genes themselves are kept
(a later mutation that deepens the network brings them back).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..space import SearchSpace
from ..subnet_config import SubnetConfig

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
