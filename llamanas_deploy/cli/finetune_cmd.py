"""`llamanas finetune`: one-shot fine-tuning of a super-network over a search space."""

from __future__ import annotations

import click

from ..finetune import SAVE_DTYPES, STRATEGIES, FinetuneSettings
from .common import emit, json_option, model_option, progress_printer, quiet_option, space_option, table, threads_option

DEFAULTS = FinetuneSettings()


@click.command()
@model_option()
@space_option
@click.option(
    "--data",
    "data",
    multiple=True,
    required=True,
    help="Text file (.txt), JSONL with a text field (.jsonl), Alpaca JSON (.json), or pydoc-train. Repeatable.",
)
@click.option("--text-field", default="text", show_default=True, help="Field holding the text in JSONL files.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Output checkpoint directory.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=DEFAULTS.strategy, show_default=True,
              help="paper: full + one random sub-network per step; sandwich: full + smallest + random; "
              "full: standard training (baseline).")  # fmt: skip
@click.option("--distill", is_flag=True, help="Sub-networks learn from the full network's logits (in-place distillation).")
@click.option("--reorder-neurons", is_flag=True, help="Sort each MLP's neurons by importance once, before training.")
@click.option("--from-scratch", is_flag=True, help="Start from random weights (only config.json is read).")
@click.option("--steps", default=DEFAULTS.steps, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=DEFAULTS.batch_size, show_default=True, type=click.IntRange(min=1))
@click.option("--seq-len", default=DEFAULTS.seq_len, show_default=True, type=click.IntRange(min=2))
@click.option("--lr", default=DEFAULTS.lr, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate (the paper: 1e-5).")  # fmt: skip
@click.option("--warmup-steps", default=DEFAULTS.warmup_steps, show_default=True, type=click.IntRange(min=0))
@click.option("--weight-decay", default=DEFAULTS.weight_decay, show_default=True, type=click.FloatRange(min=0))
@click.option("--seed", default=DEFAULTS.seed, show_default=True)
@click.option("--save-every", default=DEFAULTS.save_every, show_default=True, type=click.IntRange(min=1),
              help="Checkpoint every N steps.")  # fmt: skip
@click.option("--save-dtype", type=click.Choice(SAVE_DTYPES), default=DEFAULTS.save_dtype, show_default=True)
@threads_option(None, help="torch threads (default: torch's choice).")
@quiet_option
@json_option
def finetune(model, space_name, data, text_field, out, threads, quiet, as_json, **fields) -> None:
    """Fine-tune a super-network once so that its sub-networks work; resumable (rerun the same command)."""
    from ..finetune import finetune as run_finetune
    from ..space import load_space

    if threads:
        import torch

        torch.set_num_threads(threads)
    settings = FinetuneSettings(**fields)
    printer = progress_printer(quiet)
    try:
        result = run_finetune(model, load_space(space_name), data, out, settings, text_field=text_field, callback=printer)
    finally:
        printer.close()
    emit(result.to_dict(), as_json, _render)


def _render(r: dict) -> str:
    rows = [("steps", r.get("steps")), ("loss (full)", r.get("final_loss_full")), ("loss (sub-network)", r.get("final_loss_sub"))]
    return f"fine-tuned super-network written to {r['out']}\n" + table(rows, ["", "value"])
