"""`llamanas evaluate`: perplexity, multiple-choice accuracy or lm-eval tasks of a sub-network, inside the super-network."""

from __future__ import annotations

import click

from ..errors import BadInputError
from .common import emit, json_option, log, space_option


@click.command()
@click.option("--model", "model", default="tiny", show_default=True, help="Super-network dir or built-in name.")
@space_option
@click.option("--subnet", "subnet_arg", default="largest", show_default=True,
              help="Sub-network: inline JSON, a JSON file, FRONT.json#INDEX, 'largest' or 'smallest'.")
@click.option("--data", "data", default=None, help="Text for perplexity (.txt, .jsonl, Alpaca .json); default: the model's heldout.txt.")
@click.option("--task", "task", default=None, help="Multiple-choice JSONL task {context, choices, answer}.")
@click.option("--text-field", default="text", show_default=True, help="Field holding the text in JSONL data.")
@click.option("--seq-len", default=128, show_default=True, type=click.IntRange(min=2), help="Perplexity window.")
@click.option("--max-tokens", default=None, type=click.IntRange(min=2), help="Evaluate at most this many tokens.")
@click.option("--max-examples", default=None, type=click.IntRange(min=1), help="Score at most this many task examples.")
@click.option("--metric", type=click.Choice(["acc_norm", "acc"]), default="acc_norm", show_default=True,
              help="Multiple choice: length-normalized or raw log-likelihood accuracy.")
@click.option("--lm-eval-tasks", "lm_eval_tasks", default=None,
              help="Comma-separated lm-eval tasks (needs the lm-eval extra and network for its datasets).")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="lm-eval: at most this many examples per task.")
@json_option
def evaluate(model, space_name, subnet_arg, data, task, text_field, seq_len, max_tokens, max_examples, metric,
             lm_eval_tasks, limit, as_json) -> None:
    """Held-out perplexity (default), multiple-choice accuracy (--task) or lm-eval tasks of one sub-network."""
    from .. import evaluate as ev
    from ..model.supernet import SuperNetwork
    from ..space import load_space

    if sum(map(bool, (data, task, lm_eval_tasks))) > 1:
        raise BadInputError("--data, --task, --lm-eval-tasks: give one of them, not several")
    space = load_space(space_name)
    subnet = _subnet(space, subnet_arg)
    if lm_eval_tasks:
        _lm_eval(model, space, subnet, [t.strip() for t in lm_eval_tasks.split(",") if t.strip()], limit, as_json)
        return
    if task:
        inputs = ev.load_task(model, task, max_examples)
    else:
        inputs = _token_ids(model, data, text_field) if data else ev.load_heldout(model)
    supernet = SuperNetwork.load(model)
    supernet.check_space(space)
    log(f"evaluating sub-network {subnet.id} ({subnet.num_layers} layers) of {supernet.source}")
    if task:
        result = ev.multiple_choice(supernet, subnet, inputs, metric=metric)
    else:
        result = ev.perplexity(supernet, subnet, inputs, seq_len=seq_len, max_tokens=max_tokens)
    emit(result.to_dict() | {"subnet": subnet.to_dict(), "space_id": space.id}, as_json, _render)


def _lm_eval(model, space, subnet, tasks: list[str], limit, as_json: bool) -> None:
    from ..lm_eval_adapter import evaluate_lm_eval, require_lm_eval

    require_lm_eval()  # fail before loading the model when the extra is missing
    log(f"evaluating sub-network {subnet.id} ({subnet.num_layers} layers) on lm-eval tasks {', '.join(tasks)}")
    metrics = evaluate_lm_eval(model, space, subnet, tasks, limit)
    result = {"lm_eval": metrics, "subnet_id": subnet.id, "subnet": subnet.to_dict(), "space_id": space.id, "limit": limit}
    emit(result, as_json, _render_lm_eval)


def _render_lm_eval(r: dict) -> str:
    lines = [f"{task}  {name.split(',')[0]} {value:.4f}" for task, metrics in r["lm_eval"].items()
             for name, value in metrics.items() if isinstance(value, float) and "_stderr" not in name]
    return "\n".join(lines + [f"sub-network {r['subnet_id']} {r['subnet']}"])


def _subnet(space, value: str):
    from ..subnet_config import read_subnet_arg

    named = {"largest": space.largest, "smallest": space.smallest}
    return named[value] if value in named else space.validate(read_subnet_arg(value), value)


def _token_ids(model: str, data: str, text_field: str) -> list[int]:
    from ..data import load_tokenizer, read_texts, tokenize

    tokenizer = load_tokenizer(model)
    return tokenize(read_texts(data, text_field), tokenizer, tokenizer.token_to_id("</s>"))


def _render(r: dict) -> str:
    amount = f"{r['num_tokens']:,} tokens" if "num_tokens" in r else f"{r['num_examples']:,} examples"
    extra = ""
    if "acc" in r["details"]:
        d = r["details"]
        extra = f" (acc {d['acc']:.4f}, acc_norm {d['acc_norm']:.4f}, chance {d['chance']:.4f})"
    return f"{r['metric']} {r['value']:.4f}{extra} on {amount}, sub-network {r['subnet_id']} {r['subnet']}"
