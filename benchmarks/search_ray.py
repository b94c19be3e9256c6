"""Wall time of one search with its accuracy measured on 1 and on 2 Ray workers, side by side.

The same NSGA-II search (embedded `tiny` super-network and space, held-out perplexity and fp16
size, same seed and budget) runs three times in one process: here without Ray on one torch thread
(the reference; a worker also gets one CPU, hence one thread), then on a Ray cluster with `--workers` 1 and 2 (one CPU each; each loads the super-network once).
Printed per run: the whole wall time, the start-up (until the first evaluation is in: Ray workers
start and load the model), the evaluation phase after it, and the ratios against 1 worker; and
whether the front is the reference's (it must be: evaluation is deterministic).

    python benchmarks/search_ray.py [--ray ADDRESS] [--evaluations 40] [--population 10]
        [--eval-tokens 2048] [--seed 0]

Without --ray a local Ray instance of 2 CPUs is started for the run and stopped after it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from llamanas_deploy.cli.common import table
from llamanas_deploy.cluster import RayWorkers, import_ray
from llamanas_deploy.search import NSGA2, ModelSize, Perplexity, SearchProblem, minimize


def timed(problem, args, out: Path, workers: RayWorkers | None) -> dict:
    first: list[float] = []
    started = time.perf_counter()

    def on_event(event) -> None:
        if event.done >= 1 and not first:
            first.append(time.perf_counter() - started)

    result = minimize(problem, NSGA2(population=args.population), args.evaluations, args.seed, out=out,
                      callback=on_event, workers=workers)  # fmt: skip
    wall = time.perf_counter() - started
    return {"wall_s": wall, "startup_s": first[0], "eval_s": wall - first[0], "front": result.front}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ray", default=None, help="Ray cluster address [a local 2-CPU instance]")
    parser.add_argument("--evaluations", type=int, default=40)
    parser.add_argument("--population", type=int, default=10)
    parser.add_argument("--eval-tokens", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    ray = import_ray()
    if args.ray:
        ray.init(address=args.ray, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        problem = SearchProblem("tiny", "tiny", [Perplexity(max_tokens=args.eval_tokens), ModelSize()])
        with tempfile.TemporaryDirectory() as tmp:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                runs = {"here, no Ray": timed(problem, args, Path(tmp) / "here", None)}
            finally:
                torch.set_num_threads(threads)
            for n in (1, 2):
                runs[f"Ray, {n} worker{'s' if n > 1 else ''}"] = timed(problem, args, Path(tmp) / f"w{n}", RayWorkers(n))
    finally:
        ray.shutdown()

    one = runs["Ray, 1 worker"]
    reference = runs["here, no Ray"]["front"]
    rows = [
        (name, f"{r['wall_s']:.1f}", f"{r['startup_s']:.1f}", f"{r['eval_s']:.1f}",
         f"{one['wall_s'] / r['wall_s']:.2f}x", f"{one['eval_s'] / r['eval_s']:.2f}x", "yes" if r["front"] == reference else "NO")
        for name, r in runs.items()
    ]  # fmt: skip
    print(
        f"NSGA-II on tiny, {args.evaluations} evaluations (population {args.population}, perplexity on "
        f"{args.eval_tokens} tokens, seed {args.seed}); Ray cluster of {cpus} CPUs, 1 CPU per worker"
    )
    print(table(rows, ["run", "wall s", "start-up s", "evaluating s", "speed-up (wall)", "speed-up (evaluating)",
                       "same front"]))  # fmt: skip
    if any(r[-1] != "yes" for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
