"""`llamanas evaluate`: perplexity, multiple-choice accuracy or lm-eval tasks of a sub-network, inside the super-network."""

from __future__ import annotations

import click

from ..errors import BadInputError
from ..evaluate import MC_METRICS, EvalSettings, evaluate_subnet
from ..lm_eval_adapter import evaluate_lm_eval
from ..space import load_space
from .common import emit, progress_printer
from .options import DATA, JSON, MAX_TOKENS, MODEL, SEQ_LEN, SPACE, SUBNET, TEXT_FIELD, default_of, settings_from


@click.command()
@MODEL()
@SPACE()
@SUBNET(default="largest")
@DATA(EvalSettings, note="For perplexity [the model's heldout.txt].")
@click.option("--task", "task", default=default_of(EvalSettings, "task"),
              help="Multiple-choice JSONL task {context, choices, answer}.")  # fmt: skip
@TEXT_FIELD(EvalSettings)
@SEQ_LEN(EvalSettings, note="The perplexity window.")
@MAX_TOKENS(EvalSettings)
@click.option("--max-examples", default=default_of(EvalSettings, "max_examples"), type=click.IntRange(min=1),
              help="Score at most this many task examples.")
@click.option("--metric", type=click.Choice(MC_METRICS), default=default_of(EvalSettings, "metric"), show_default=True,
              help="Multiple choice: length-normalized or raw log-likelihood accuracy.")
@click.option("--lm-eval-tasks", "lm_eval_tasks", default=None,
              help="Comma-separated lm-eval tasks (needs the lm-eval extra and network for its datasets).")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="lm-eval: at most this many examples per task.")
@JSON()
def evaluate(model, space_name, subnet_arg, lm_eval_tasks, limit, as_json, **fields) -> None:
    """Held-out perplexity (default), multiple-choice accuracy (--task) or lm-eval tasks of one sub-network."""
    if sum(map(bool, (fields["data"], fields["task"], lm_eval_tasks))) > 1:
        raise BadInputError("--data, --task, --lm-eval-tasks: give one of them, not several")
    space = load_space(space_name)
    config = space.resolve(subnet_arg)
    if lm_eval_tasks:
        _lm_eval(model, space, config, [t.strip() for t in lm_eval_tasks.split(",") if t.strip()], limit, as_json)
        return
    settings = settings_from(EvalSettings, fields)
    result = evaluate_subnet(model, space, config, settings, callback=progress_printer(quiet=False))
    emit(result.to_dict(), as_json, _render)


def _lm_eval(model, space, subnet, tasks: list[str], limit, as_json: bool) -> None:
    metrics = evaluate_lm_eval(model, space, subnet, tasks, limit, callback=progress_printer(quiet=False))
    result = {"lm_eval": metrics, "subnet_id": subnet.id, "subnet": subnet.to_dict(), "space_id": space.id, "limit": limit}
    emit(result, as_json, _render_lm_eval)


def _render_lm_eval(r: dict) -> str:
    lines = [f"{task}  {name.split(',')[0]} {value:.4f}" for task, metrics in r["lm_eval"].items()
             for name, value in metrics.items() if isinstance(value, float) and "_stderr" not in name]
    return "\n".join(lines + [f"sub-network {r['subnet_id']} {r['subnet']}"])


def _render(r: dict) -> str:
    amount = f"{r['num_tokens']:,} tokens" if "num_tokens" in r else f"{r['num_examples']:,} examples"
    extra = ""
    if "acc" in r["details"]:
        d = r["details"]
        extra = f" (acc {d['acc']:.4f}, acc_norm {d['acc_norm']:.4f}, chance {d['chance']:.4f})"
    return f"{r['metric']} {r['value']:.4f}{extra} on {amount}, sub-network {r['subnet_id']} {r['subnet']}"
