"""Search efficiency at an equal budget of real evaluations: NSGA-II vs LINAS vs random search.

On the embedded default super-network (`--model tiny`, `tiny` space), each algorithm spends the
same number of real accuracy evaluations (held-out perplexity, measured on the super-network),
over several seeds. Second objective: predicted latency from a predictor of the tiny space
(`--predictor`, default: a shipped one in predictors/ fitted on that space), else analytic size.
Printed per algorithm, mean ± std over seeds:

- hypervolume of the final front (fixed normalization: smallest and largest sub-network span
  [0, 1] per objective; reference point 1.1);
- evaluations needed to reach the final hypervolume of random search with the same seed.

Perplexities are shared between runs in memory (each run still counts and spends its own budget).

    python benchmarks/search_efficiency.py [--model tiny] [--evaluations 100] [--population 20]
        [--seeds 3] [--eval-tokens 256] [--predictor FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from llamanas_deploy.cli.common import table
from llamanas_deploy.errors import BadInputError
from llamanas_deploy.jsonfiles import read_json
from llamanas_deploy.search import ALGORITHMS as REGISTRY
from llamanas_deploy.search import SearchProblem, minimize, objectives_from_specs
from llamanas_deploy.search.objectives import sign
from llamanas_deploy.search.session import Normalization, pareto_indices
from llamanas_deploy.space import load_space

ROOT = Path(__file__).resolve().parent.parent
ALGORITHMS = ("random", "nsga2", "linas")


class SharedMeasure:
    """An expensive objective whose values are remembered across runs of this benchmark."""

    def __init__(self, objective):
        self.objective, self.cache, self.measured = objective, {}, 0
        self.name, self.direction, self.expensive = objective.name, objective.direction, objective.expensive

    def evaluate(self, configs):
        missing = [c for c in configs if c.id not in self.cache]
        if missing:
            self.cache.update(zip((c.id for c in missing), self.objective.evaluate(missing)))
            self.measured += len(missing)
        return np.array([self.cache[c.id] for c in configs])

    def describe(self):
        return self.objective.describe()


def default_predictor(space_id: str) -> str | None:
    for path in sorted((ROOT / "predictors").glob("*.json")):
        try:
            meta = read_json(path, "predictor file").get("metadata", {})
        except BadInputError:
            continue
        if meta.get("space_id") == space_id and meta.get("metric") == "decode_ms":
            return str(path)
    return None


def hypervolume_curve(out: Path, objectives, space) -> np.ndarray:
    """Hypervolume of the archive after each real evaluation, in evaluation order."""
    records = [json.loads(line) for line in (out / "evaluations.jsonl").read_text().splitlines()]
    F = np.array([[sign(o) * r["values"][o.name] for o in objectives] for r in records])
    ids = [r["subnet_id"] for r in records]
    norm = Normalization.from_anchors(F[[ids.index(space.smallest.id), ids.index(space.largest.id)]])
    return np.array([norm.hypervolume(F[:k][pareto_indices(F[:k])]) for k in range(1, len(F) + 1)])


def evaluations_to_reach(curve: np.ndarray, target: float) -> int | None:
    hit = np.flatnonzero(curve >= target - 1e-12)
    return int(hit[0]) + 1 if len(hit) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--evaluations", type=int, default=100)
    parser.add_argument("--population", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--eval-tokens", type=int, default=256)
    parser.add_argument("--predictor", default=None)
    args = parser.parse_args()

    space = load_space(args.space)
    predictor = args.predictor or default_predictor(space.id)
    specs = ["accuracy", f"latency:{predictor}" if predictor else "size"]
    base = SearchProblem(args.model, space, objectives_from_specs(specs, max_tokens=args.eval_tokens))
    accuracy = SharedMeasure(base.objectives[0])
    problem = SearchProblem(base.supernet, space, [accuracy, *base.objectives[1:]])
    print(f"model {args.model}, space {space.id}, objectives {[o.name for o in problem.objectives]}"
          f" ({'predictor ' + predictor if predictor else 'no predictor for this space: analytic size'}), "
          f"budget {args.evaluations} real evaluations, population {args.population}, seeds {args.seeds}", file=sys.stderr)

    curves: dict[str, list[np.ndarray]] = {a: [] for a in ALGORITHMS}
    seconds: dict[str, list[float]] = {a: [] for a in ALGORITHMS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for algorithm in ALGORITHMS:
                out = Path(tmp) / f"{algorithm}-{seed}"
                start = time.perf_counter()
                minimize(problem, REGISTRY[algorithm](population=args.population), args.evaluations, seed, out=out)
                seconds[algorithm].append(time.perf_counter() - start)
                curves[algorithm].append(hypervolume_curve(out, problem.objectives, space))
                print(f"seed {seed} {algorithm}: hypervolume {curves[algorithm][-1][-1]:.4f} "
                      f"({seconds[algorithm][-1]:.0f} s)", file=sys.stderr)
    print(render(curves, seconds, args, accuracy.measured))


def render(curves, seconds, args, measured: int) -> str:
    random_final = [c[-1] for c in curves["random"]]
    rows = []
    for algorithm in ALGORITHMS:
        final = np.array([c[-1] for c in curves[algorithm]])
        reach = [evaluations_to_reach(c, t) for c, t in zip(curves[algorithm], random_final)]
        hits = [r for r in reach if r is not None]
        rows.append([
            algorithm,
            f"{final.mean():.4f} ± {final.std():.4f}",
            f"{np.mean(hits):.0f} ± {np.std(hits):.0f}" if hits else "-",
            f"{len(hits)}/{len(reach)}",
            f"{np.mean(seconds[algorithm]):.0f}",
        ])  # fmt: skip
    headers = ["algorithm", "final hypervolume", "evals to random's final HV", "reached", "s / run"]
    note = (
        f"{args.evaluations} real evaluations per run, population {args.population}, {args.seeds} seeds "
        f"(mean ± std); {measured} distinct sub-networks measured in all"
    )
    return table(rows, headers) + "\n" + note


if __name__ == "__main__":
    main()
