"""The three search algorithms, objects configured in their constructors (as pymoo's are), each
spending a session's budget of real evaluations in `run(session, seed)`:

- `NSGA2` (`nsga2`): pymoo NSGA-II with the paper's operators; every individual is evaluated for real.
- `LINAS` (`linas`): LINAS as in Intel DyNAS-T — evaluate a population for real, fit XGBoost predictors
  of the expensive objectives on everything evaluated so far, run NSGA-II on the predicted
  objectives (thousands of cheap inner evaluations), evaluate its final population for real.
- `RandomSearch` (`random`): distinct sub-networks drawn uniformly (depth, then every layer's width).

All three start from the same first batch (smallest and largest sub-network, then random
ones), which also fixes the hypervolume's normalization, so their fronts compare directly.
Each is deterministic for a seed, which is what makes resuming work: a restarted search
replays its trajectory from the ledger for free and measures from where it stopped.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import numpy as np

from ..errors import BadInputError
from ..space import SearchSpace
from ..subnet_config import SubnetConfig, unique
from .problem import canonical_genes, decode_all, make_nsga2, make_problem
from .session import SearchSession

STALL_GENERATIONS = 25  # stop when this many generations in a row find nothing new to evaluate
LINAS_INNER_EVALUATIONS = 5000  # DyNAS-T's inner-loop budget per LINAS iteration
INNER_MATING_RETRIES = 5


def initial_population(space: SearchSpace, size: int, seed: int) -> list[SubnetConfig]:
    """Smallest and largest sub-networks, then distinct random ones."""
    return unique([space.smallest, space.largest, *space.sample_random(size, seed)])[:size]


class Algorithm:
    """A search algorithm, configured in its constructor; `run` spends a session's budget."""

    name: ClassVar[str]

    def __init__(self, population: int = 50):
        if isinstance(population, bool) or not isinstance(population, int) or population < 2:
            raise BadInputError(f"expected an integer >= 2, got {population!r}", param="population")
        self.population = population

    def run(self, session: SearchSession, seed: int) -> None:
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """What a search directory records of the algorithm (`search.json`)."""
        return {"algorithm": self.name, "population": self.population, "linas_inner_evaluations": LINAS_INNER_EVALUATIONS}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(population={self.population})"


class NSGA2(Algorithm):
    """pymoo NSGA-II with the paper's operators; every individual is evaluated for real."""

    name = "nsga2"

    def run(self, session: SearchSession, seed: int) -> None:
        from pymoo.core.termination import NoTermination

        space, pop_size = session.space, self.population
        algorithm = make_nsga2(space, pop_size, initial_population(space, min(pop_size, session.budget), seed))
        problem = make_problem(space, len(session.objectives), len(session.constraints), session.evaluate)
        algorithm.setup(problem, termination=NoTermination(), seed=seed)
        stalled = 0
        while session.remaining > 0 and stalled < STALL_GENERATIONS:
            algorithm.n_offsprings = min(pop_size, session.remaining)
            infills = algorithm.ask()
            if infills is None or len(infills) == 0:
                break
            before = session.spent
            algorithm.evaluator.eval(problem, infills, algorithm=algorithm)
            algorithm.tell(infills=infills)
            session.end_generation()
            stalled = stalled + 1 if session.spent == before else 0


class RandomSearch(Algorithm):
    """Distinct sub-networks drawn uniformly (depth, then every layer's width), a population at a time."""

    name = "random"

    def run(self, session: SearchSession, seed: int) -> None:
        space = session.space
        order = initial_population(space, session.budget, seed)
        order = unique(order + space.sample_random(session.budget, seed + 1))[: session.budget]
        for start in range(0, len(order), self.population):
            session.evaluate(order[start : start + self.population])
            session.end_generation()


class LINAS(Algorithm):
    """LINAS (Intel DyNAS-T): NSGA-II on XGBoost-predicted objectives between real evaluations.

    `inner_evaluations`: predicted evaluations of each inner NSGA-II run (DyNAS-T: 5000).
    """

    name = "linas"

    def __init__(self, population: int = 50, inner_evaluations: int = LINAS_INNER_EVALUATIONS):
        super().__init__(population)
        if isinstance(inner_evaluations, bool) or not isinstance(inner_evaluations, int) or inner_evaluations < 1:
            raise BadInputError(f"expected an integer >= 1, got {inner_evaluations!r}", param="inner_evaluations")
        self.inner_evaluations = inner_evaluations

    def run(self, session: SearchSession, seed: int) -> None:
        pop_size = self.population
        batch = initial_population(session.space, min(pop_size, session.budget), seed)
        iteration = 0
        while batch:
            session.evaluate(batch)
            session.end_generation()
            if session.remaining <= 0:
                break
            iteration += 1
            predicted = fit_surrogate(session, seed + iteration)
            candidates = inner_search(session, predicted, pop_size, seed + iteration, self.inner_evaluations)
            batch = _fill(session, candidates, min(pop_size, session.remaining), seed + iteration)

    def settings(self) -> dict[str, Any]:
        return super().settings() | {"linas_inner_evaluations": self.inner_evaluations}

    def __repr__(self) -> str:
        return f"LINAS(population={self.population}, inner_evaluations={self.inner_evaluations})"


def fit_surrogate(session: SearchSession, seed: int) -> Callable[[list[SubnetConfig]], np.ndarray]:
    """configs -> measure matrix: expensive measures predicted by XGBoost, cheap ones computed."""
    from xgboost import XGBRegressor

    configs = list(session.visited.values())
    values = session.ledger.values(configs)
    X = accuracy_features(session.space, configs)
    models = {}
    for j, measure in enumerate(session.ledger.measures):
        if measure.expensive:
            model = XGBRegressor(n_estimators=300, max_depth=3, learning_rate=0.05, n_jobs=1, random_state=seed)
            models[j] = model.fit(X, values[:, j])

    def measure_matrix(batch: list[SubnetConfig]) -> np.ndarray:
        features = accuracy_features(session.space, batch) if models else None
        columns = [
            models[j].predict(features) if j in models else m.evaluate(batch)
            for j, m in enumerate(session.ledger.measures)
        ]
        return np.column_stack(columns).astype(float)

    return measure_matrix


def accuracy_features(space: SearchSpace, configs: list[SubnetConfig]) -> np.ndarray:
    """Depth fraction, every layer's width fraction (0 when dropped) and the total width fraction."""
    genes = canonical_genes(space, np.array([space.encode(c) for c in configs], dtype=float))
    depth = np.asarray(space.depth_choices)[genes[:, 0]]
    dropped = np.arange(space.max_layers)[None, :] >= depth[:, None]
    columns = [depth[:, None] / space.max_layers]
    for k, dim in enumerate(space.layer_dims):
        block = genes[:, 1 + k * space.max_layers : 1 + (k + 1) * space.max_layers]
        width = np.where(dropped, 0.0, np.asarray(dim.choices, float)[block] / max(dim.choices))
        columns += [width, width.sum(axis=1, keepdims=True) / space.max_layers]
    return np.hstack(columns)


def inner_search(
    session: SearchSession,
    measure_matrix: Callable[[list[SubnetConfig]], np.ndarray],
    pop_size: int,
    seed: int,
    evaluations: int,
) -> list[SubnetConfig]:
    """NSGA-II on predicted objectives, warm-started from the best real evaluations; its final population."""
    from pymoo.optimize import minimize

    space = session.space
    problem = make_problem(
        space, len(session.objectives), len(session.constraints), lambda cs: session.split(measure_matrix(cs))
    )
    algorithm = make_nsga2(space, pop_size, _best_evaluated(session, pop_size))
    # fixed generations and few mating retries bound the cost once the population has converged
    algorithm.mating.n_max_iterations = INNER_MATING_RETRIES
    result = minimize(problem, algorithm, ("n_gen", max(1, evaluations // pop_size)), seed=seed, verbose=False)
    return decode_all(space, result.pop.get("X"))


def _best_evaluated(session: SearchSession, n: int) -> list[SubnetConfig]:
    """The `n` best real evaluations by constrained non-dominated rank."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    configs, F, feasible = session.archive()
    fronts = NonDominatedSorting().do(F[feasible]) if feasible.any() else []
    feasible_idx = np.flatnonzero(feasible)
    order = [feasible_idx[i] for front in fronts for i in front] + list(np.flatnonzero(~feasible))
    return [configs[i] for i in order[:n]]


def _fill(session: SearchSession, candidates: list[SubnetConfig], n: int, seed: int) -> list[SubnetConfig]:
    """The first `n` unevaluated candidates, topped up with random unevaluated sub-networks."""
    batch = [c for c in unique(candidates) if c.id not in session.visited][:n]
    if len(batch) < n:
        extra = session.space.sample_random(n + session.spent + len(batch), seed)
        taken = {c.id for c in batch}
        batch += [c for c in extra if c.id not in session.visited and c.id not in taken][: n - len(batch)]
    return batch


ALGORITHMS: dict[str, type[Algorithm]] = {cls.name: cls for cls in (NSGA2, LINAS, RandomSearch)}  # the one home of their names
