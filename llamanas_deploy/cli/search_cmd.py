"""`llamanas search`: multi-objective search for a device-specific sub-network."""

from __future__ import annotations

import click

from .common import emit, json_option, space_option, table


@click.command()
@click.option("--model", "model_path", default="tiny", show_default=True, help="Super-network dir or built-in name.")
@space_option
@click.option(
    "--objective",
    "objective_specs",
    multiple=True,
    help="accuracy[:TASK_OR_DATA] | latency:PREDICTOR_FILE | size (repeat; default accuracy = held-out perplexity).",
)
@click.option("--max-latency", "max_latency_ms", type=float, help="Constraint: predicted latency <= MS.")
@click.option("--max-size", "max_size_gib", type=float, help="Constraint: fp16 size <= GIB.")
@click.option("--algorithm", type=click.Choice(["nsga2", "linas", "random"]), default="nsga2", show_default=True)
@click.option("--population", default=50, show_default=True, type=click.IntRange(min=2))
@click.option("--evaluations", default=250, show_default=True, type=click.IntRange(min=2), help="Real evaluations.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--eval-tokens", default=2048, show_default=True, type=click.IntRange(min=1), help="Perplexity tokens.")
@click.option("--eval-examples", default=100, show_default=True, type=click.IntRange(min=1), help="Task examples.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output dir (resumes if same).")
@json_option
def search(
    model_path: str,
    space_name: str,
    objective_specs: tuple[str, ...],
    max_latency_ms: float | None,
    max_size_gib: float | None,
    algorithm: str,
    population: int,
    evaluations: int,
    seed: int,
    eval_tokens: int,
    eval_examples: int,
    out_dir: str,
    as_json: bool,
) -> None:
    """Search the space: accuracy measured on the super-network, latency from a device predictor.

    Writes the Pareto front (front.json, for `llamanas export --subnet DIR/front.json#I`), every
    evaluated sub-network, hypervolume per generation, a plot and a summary to --out. Run it
    again with the same settings to resume an interrupted search.
    """
    from ..search import SearchSettings, build_objective_set, run_search
    from ..space import load_space

    space = load_space(space_name)
    settings = SearchSettings(algorithm, population, evaluations, seed, max_latency_ms, max_size_gib)
    settings.check()
    objective_set = build_objective_set(model_path, space, objective_specs, eval_tokens, eval_examples)
    result = run_search(space, objective_set, out_dir, settings)
    report = result.to_dict()
    report["objectives"] = [{"name": o.name, "direction": o.direction} for o in objective_set.objectives]
    emit(report, as_json, _render)


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
