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
from llamanas_deploy.search import ObjectiveSet, SearchSettings, build_objective_set, run_search
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
            meta = json.loads(path.read_text()).get("metadata", {})
        except (OSError, json.JSONDecodeError):
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
    base = build_objective_set(args.model, space, specs, eval_tokens=args.eval_tokens)
    accuracy = SharedMeasure(base.objectives[0])
    objective_set = ObjectiveSet([accuracy, *base.objectives[1:]], base.size, base.latency)
    print(f"model {args.model}, space {space.id}, objectives {[o.name for o in objective_set.objectives]}"
          f" ({'predictor ' + predictor if predictor else 'no predictor for this space: analytic size'}), "
          f"budget {args.evaluations} real evaluations, population {args.population}, seeds {args.seeds}", file=sys.stderr)

    curves: dict[str, list[np.ndarray]] = {a: [] for a in ALGORITHMS}
    seconds: dict[str, list[float]] = {a: [] for a in ALGORITHMS}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for algorithm in ALGORITHMS:
                out = Path(tmp) / f"{algorithm}-{seed}"
                settings = SearchSettings(algorithm, args.population, args.evaluations, seed)
                start = time.perf_counter()
                run_search(space, objective_set, out, settings, show_progress=False)
                seconds[algorithm].append(time.perf_counter() - start)
                curves[algorithm].append(hypervolume_curve(out, objective_set.objectives, space))
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
