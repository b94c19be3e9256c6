"""`llamanas search`: multi-objective search for a device-specific sub-network (`search.minimize`)."""

from __future__ import annotations

from pathlib import Path

import click

from ..cluster import RayWorkers
from ..errors import BadInputError
from ..search import SearchProblem, objectives_from_specs
from ..search.algorithms import ALGORITHMS, NSGA2
from ..search.objectives import Perplexity, TaskAccuracy
from ..search.run import minimize
from .common import emit, progress_printer, table
from .options import (
    EVAL_TOKENS, EVALUATIONS, JSON, MAX_LATENCY, MODEL, OUT, POPULATION, POSITIVE, RAY, SEED, SPACE, FiniteFloat,
    default_of,
)  # fmt: skip
from .registry_options import ALGORITHM


@click.command()
@MODEL()
@SPACE()
@click.option(
    "--objective",
    "objectives",
    multiple=True,
    help="accuracy[:TASK_OR_DATA] | latency:PREDICTOR_FILE | size (repeat; default accuracy = held-out perplexity).",
)
@MAX_LATENCY()
@click.option("--max-size", "max_size_gib", type=POSITIVE, help="Constraint: fp16 size <= GIB.")
@ALGORITHM(default=NSGA2.name)
@POPULATION(NSGA2)
@EVALUATIONS(minimize)
@SEED(minimize, note="of the search (same seed, same front).")
@EVAL_TOKENS(default=default_of(Perplexity, "max_tokens"))
@click.option("--eval-examples", default=default_of(TaskAccuracy, "max_examples"), show_default=True,
              type=click.IntRange(min=1), help="Task examples per accuracy evaluation.")  # fmt: skip
@OUT(required=True, note="the search directory; the same settings resume in it.")
@RAY(note="Measures accuracy on Ray actors.")
@click.option("--workers", type=click.IntRange(min=1), help="Ray actors measuring accuracy, each holding the model [1].")
@click.option("--gpus-per-worker", type=FiniteFloat(min=0), help="GPUs of each Ray actor [0].")
@JSON()
def search(
    model: str,
    space_name: str,
    objectives: tuple[str, ...],
    max_latency_ms: float | None,
    max_size_gib: float | None,
    algorithm: str,
    population: int,
    evaluations: int,
    seed: int,
    eval_tokens: int,
    eval_examples: int,
    out: Path,
    address: str | None,
    workers: int | None,
    gpus_per_worker: float | None,
    as_json: bool,
) -> None:
    """Search the space: accuracy measured on the super-network, latency from a device predictor.

    Writes the Pareto front (front.json, for `llamanas export --subnet DIR/front.json#I`), every
    evaluated sub-network, hypervolume per generation, a plot and a summary to --out. Run it
    again with the same settings to resume an interrupted search. With --ray the accuracy of
    each generation's sub-networks is measured in parallel on a Ray cluster; same seed, same front.
    """
    pool = _ray_workers(address, workers, gpus_per_worker)

    chosen = ALGORITHMS[algorithm](population=population)
    built = objectives_from_specs(objectives, max_tokens=eval_tokens, max_examples=eval_examples)
    problem = SearchProblem(model, space_name, built, max_latency_ms=max_latency_ms, max_size_gib=max_size_gib)
    result = minimize(problem, chosen, evaluations, seed, out=out, callback=progress_printer(quiet=False),
                      workers=pool)  # fmt: skip
    emit(result.to_dict(), as_json, _render)


def _ray_workers(address: str | None, workers: int | None, gpus: float | None):
    """`RayWorkers` for --ray (Ray imported only then), else None; worker options need --ray."""
    if address is None:
        for value, param in ((workers, "workers"), (gpus, "gpus_per_worker")):
            if value is not None:
                raise BadInputError("applies to a search on Ray only; add --ray auto or --ray ADDRESS", param=param)
        return None
    return RayWorkers(workers or 1, gpus or 0.0, address)


def _render(r: dict) -> str:
    names = [o["name"] for o in r["objectives"]]
    full = r["full"]["values"]
    rows = [("full", r["full"]["subnet_id"], *(full[n] for n in names))]
    rows += [(f"#{i}", e["subnet_id"], *(e["objectives"][n] for n in names)) for i, e in enumerate(r["front"])]
    last = r["history"][-1] if r["history"] else {"hypervolume": 0.0}
    head = (
        f"{r['settings']['algorithm']}: {r['evaluations']} sub-networks evaluated "
        f"({r['measured_now']} measured in this run), front of {len(r['front'])}, hypervolume {last['hypervolume']:.4f}"
    )
    files = f"wrote {r['out_dir']}/: {', '.join(r['files'])}"
    return "\n".join([head, "", table(rows, ["", "sub-network", *names]), "", *r["summary"], "", files])
