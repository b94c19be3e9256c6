"""`llamanas search`: multi-objective search for a device-specific sub-network (`search.minimize`)."""

from __future__ import annotations

import inspect

import click

from ..errors import BadInputError
from ..search.algorithms import ALGORITHMS, NSGA2
from ..search.objectives import Perplexity, TaskAccuracy
from ..search.run import minimize
from .common import POSITIVE, FiniteFloat, emit, json_option, model_option, progress_printer, space_option, table

_MINIMIZE = {name: p.default for name, p in inspect.signature(minimize).parameters.items()}


@click.command()
@model_option()
@space_option
@click.option(
    "--objective",
    "objectives",
    multiple=True,
    help="accuracy[:TASK_OR_DATA] | latency:PREDICTOR_FILE | size (repeat; default accuracy = held-out perplexity).",
)
@click.option("--max-latency", "max_latency_ms", type=POSITIVE, help="Constraint: predicted latency <= MS.")
@click.option("--max-size", "max_size_gib", type=POSITIVE, help="Constraint: fp16 size <= GIB.")
@click.option("--algorithm", type=click.Choice(list(ALGORITHMS)), default=NSGA2.name, show_default=True)
@click.option("--population", default=NSGA2().population, show_default=True, type=click.IntRange(min=2))
@click.option("--evaluations", default=_MINIMIZE["evaluations"], show_default=True, type=click.IntRange(min=2),
              help="Real evaluations.")  # fmt: skip
@click.option("--seed", default=_MINIMIZE["seed"], show_default=True, type=int)
@click.option("--eval-tokens", default=Perplexity().max_tokens, show_default=True, type=click.IntRange(min=1),
              help="Perplexity tokens.")  # fmt: skip
@click.option("--eval-examples", default=TaskAccuracy().max_examples, show_default=True, type=click.IntRange(min=1),
              help="Task examples.")  # fmt: skip
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Output dir (resumes if same).")
@click.option("--ray", "address", metavar="auto|ADDRESS",
              help="Measure accuracy on Ray actors: auto (this machine's cluster, else a local one) or a cluster address.")
@click.option("--workers", type=click.IntRange(min=1), help="Ray actors measuring accuracy, each holding the model [1].")
@click.option("--gpus-per-worker", type=FiniteFloat(min=0), help="GPUs of each Ray actor [0].")
@json_option
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
    out: str,
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
    from ..search import SearchProblem, objectives_from_specs

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
    from ..cluster import RayWorkers

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
