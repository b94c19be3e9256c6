"""`llamanas finetune`: one-shot fine-tuning of a super-network over a search space."""

from __future__ import annotations

import click

from .common import emit, json_option, space_option, table


@click.command()
@click.option("--model", "model", default="tiny", show_default=True, help="Super-network dir or built-in name.")
@space_option
@click.option(
    "--data",
    "data",
    multiple=True,
    required=True,
    help="Text file (.txt), JSONL with a text field (.jsonl), Alpaca JSON (.json), or pydoc-train. Repeatable.",
)
@click.option("--text-field", default="text", show_default=True, help="Field holding the text in JSONL files.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output checkpoint directory.")
@click.option("--strategy", type=click.Choice(["paper", "sandwich", "full"]), default="paper", show_default=True,
              help="paper: full + one random sub-network per step; sandwich: full + smallest + random; "
              "full: standard training (baseline).")
@click.option("--distill", is_flag=True, help="Sub-networks learn from the full network's logits (in-place distillation).")
@click.option("--reorder-neurons", is_flag=True, help="Sort each MLP's neurons by importance once, before training.")
@click.option("--from-scratch", is_flag=True, help="Start from random weights (only config.json is read).")
@click.option("--steps", default=300, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--seq-len", default=128, show_default=True, type=click.IntRange(min=2))
@click.option("--lr", default=1e-5, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate (the paper: 1e-5).")
@click.option("--warmup-steps", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--weight-decay", default=0.0, show_default=True, type=click.FloatRange(min=0))
@click.option("--seed", default=0, show_default=True)
@click.option("--save-every", default=25, show_default=True, type=click.IntRange(min=1), help="Checkpoint every N steps.")
@click.option("--save-dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True)
@click.option("--threads", default=None, type=click.IntRange(min=1), help="torch threads (default: torch's choice).")
@json_option
def finetune(model, space_name, data, text_field, out_dir, strategy, distill, reorder_neurons, from_scratch, steps,
             batch_size, seq_len, lr, warmup_steps, weight_decay, seed, save_every, save_dtype, threads, as_json) -> None:
    """Fine-tune a super-network once so that its sub-networks work; resumable (rerun the same command)."""
    from ..finetune import FinetuneSettings
    from ..finetune import finetune as run_finetune
    from ..space import load_space

    if threads:
        import torch

        torch.set_num_threads(threads)
    settings = FinetuneSettings(
        steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr, warmup_steps=warmup_steps,
        weight_decay=weight_decay, strategy=strategy, distill=distill, reorder_neurons=reorder_neurons,
        from_scratch=from_scratch, seed=seed, save_dtype=save_dtype,
    )
    record = run_finetune(model, load_space(space_name), data, out_dir, settings, text_field, save_every)
    summary = {k: v for k, v in record.items() if k != "history"} | {"out": out_dir}
    emit(summary, as_json, _render)


def _render(r: dict) -> str:
    rows = [("steps", r.get("steps")), ("loss (full)", r.get("final_loss_full")), ("loss (sub-network)", r.get("final_loss_sub"))]
    return f"fine-tuned super-network written to {r['out']}\n" + table(rows, ["", "value"])
