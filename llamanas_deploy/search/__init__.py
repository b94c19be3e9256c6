"""Hardware-aware search: NSGA-II, LINAS and random search over a space's sub-networks, pymoo style.

    problem = SearchProblem("tiny", "tiny", [Perplexity(), PredictedLatency("pred.json")], max_latency_ms=5.0)
    result = minimize(problem, NSGA2(population=50), evaluations=250, seed=0, out="search")

Objectives are objects (objectives.py): accuracy is measured on the super-network, latency comes
from a device predictor, size is analytic; `SearchProblem` binds them to one super-network
(problem.py); the algorithms are objects configured in their constructors (algorithms.py, with
pymoo doing the genetic work); every real evaluation lands in a ledger on disk (ledger.py) so a
search resumes; results.py types the front's members (`FrontMember`, picked by `choose`) and writes
the front, hypervolume history, plot and summary; `minimize` (run.py) ties them together and
reports progress through `callback`.
"""

from .algorithms import ALGORITHMS, LINAS, NSGA2, Algorithm, RandomSearch
from .objectives import ModelSize, Objective, Perplexity, PredictedLatency, TaskAccuracy, objectives_from_specs
from .problem import SearchProblem
from .results import FrontMember, choose
from .run import SearchResult, minimize

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "LINAS",
    "NSGA2",
    "RandomSearch",
    "ModelSize",
    "Objective",
    "Perplexity",
    "PredictedLatency",
    "TaskAccuracy",
    "objectives_from_specs",
    "SearchProblem",
    "FrontMember",
    "choose",
    "SearchResult",
    "minimize",
]
