"""`llamanas evaluate`: perplexity, multiple-choice accuracy or lm-eval tasks of a sub-network, inside the super-network."""

from __future__ import annotations

import click

from ..errors import BadInputError
from ..evaluate import MC_METRICS, EvalSettings
from .common import emit, json_option, model_option, progress_printer, space_option

DEFAULTS = EvalSettings()


@click.command()
@model_option()
@space_option
@click.option("--subnet", "subnet", default="largest", show_default=True,
              help="Sub-network: inline JSON, a JSON file, FRONT.json#INDEX, 'largest' or 'smallest'.")
@click.option("--data", "data", default=DEFAULTS.data, help="Text for perplexity (.txt, .jsonl, Alpaca .json); default: the model's heldout.txt.")
@click.option("--task", "task", default=DEFAULTS.task, help="Multiple-choice JSONL task {context, choices, answer}.")
@click.option("--text-field", default=DEFAULTS.text_field, show_default=True, help="Field holding the text in JSONL data.")
@click.option("--seq-len", default=DEFAULTS.seq_len, show_default=True, type=click.IntRange(min=2), help="Perplexity window.")
@click.option("--max-tokens", default=DEFAULTS.max_tokens, type=click.IntRange(min=2), help="Evaluate at most this many tokens.")
@click.option("--max-examples", default=DEFAULTS.max_examples, type=click.IntRange(min=1),
              help="Score at most this many task examples.")
@click.option("--metric", type=click.Choice(MC_METRICS), default=DEFAULTS.metric, show_default=True,
              help="Multiple choice: length-normalized or raw log-likelihood accuracy.")
@click.option("--lm-eval-tasks", "lm_eval_tasks", default=None,
              help="Comma-separated lm-eval tasks (needs the lm-eval extra and network for its datasets).")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="lm-eval: at most this many examples per task.")
@json_option
def evaluate(model, space_name, subnet, data, task, text_field, seq_len, max_tokens, max_examples, metric,
             lm_eval_tasks, limit, as_json) -> None:  # fmt: skip
    """Held-out perplexity (default), multiple-choice accuracy (--task) or lm-eval tasks of one sub-network."""
    from ..space import load_space

    if sum(map(bool, (data, task, lm_eval_tasks))) > 1:
        raise BadInputError("--data, --task, --lm-eval-tasks: give one of them, not several")
    space = load_space(space_name)
    config = space.resolve(subnet)
    if lm_eval_tasks:
        _lm_eval(model, space, config, [t.strip() for t in lm_eval_tasks.split(",") if t.strip()], limit, as_json)
        return
    from ..evaluate import evaluate_subnet

    settings = EvalSettings(data, task, text_field, seq_len, max_tokens, max_examples, metric)
    result = evaluate_subnet(model, space, config, settings, callback=progress_printer(quiet=False))
    emit(result.to_dict(), as_json, _render)


def _lm_eval(model, space, subnet, tasks: list[str], limit, as_json: bool) -> None:
    from ..lm_eval_adapter import evaluate_lm_eval

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
