"""Hardware-aware search: NSGA-II, LINAS and random search over a space's sub-networks.

Accuracy is measured on the super-network, latency comes from a device predictor, size is
analytic (objectives.py); pymoo does the genetic work (problem.py, algorithms.py); every real
evaluation lands in a ledger on disk (ledger.py) so a search resumes; results.py writes the
front, hypervolume history, plot and summary. `run_search` (run.py) ties them together.
"""

from .objectives import AccuracyObjective, LatencyObjective, Objective, ObjectiveSet, SizeObjective, build_objective_set
from .run import SearchResult, SearchSettings, run_search

__all__ = [
    "AccuracyObjective",
    "LatencyObjective",
    "Objective",
    "ObjectiveSet",
    "SizeObjective",
    "build_objective_set",
    "SearchResult",
    "SearchSettings",
    "run_search",
]
