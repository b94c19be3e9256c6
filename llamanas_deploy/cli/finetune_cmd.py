"""`llamanas finetune`: one-shot fine-tuning of a super-network over a search space."""

from __future__ import annotations

import click

from ..finetuning import COMPUTE_DTYPES, SAVE_DTYPES, STRATEGIES, FinetuneSettings
from .common import (
    POSITIVE, FiniteFloat,
    device_option, emit, json_option, model_option, progress_printer, quiet_option, space_option, table, threads_option,
)  # fmt: skip

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
@click.option("--lr", default=DEFAULTS.lr, show_default=True, type=POSITIVE,
              help="Peak learning rate (the paper: 1e-5).")  # fmt: skip
@click.option("--warmup-steps", default=DEFAULTS.warmup_steps, show_default=True, type=click.IntRange(min=0))
@click.option("--weight-decay", default=DEFAULTS.weight_decay, show_default=True, type=FiniteFloat(min=0))
@click.option("--seed", default=DEFAULTS.seed, show_default=True)
@click.option("--save-every", default=DEFAULTS.save_every, show_default=True, type=click.IntRange(min=1),
              help="Checkpoint every N steps.")  # fmt: skip
@click.option("--save-dtype", type=click.Choice(SAVE_DTYPES), default=DEFAULTS.save_dtype, show_default=True)
@click.option("--micro-batch-size", default=DEFAULTS.micro_batch_size, type=click.IntRange(min=1),
              help="Rows per forward pass in each process (gradient accumulation) [default: all its rows].")  # fmt: skip
@click.option("--activation-checkpointing", is_flag=True, help="Recompute each decoder layer in the backward pass.")
@click.option("--compute-dtype", type=click.Choice(COMPUTE_DTYPES), default="auto", show_default=True,
              help="bfloat16: forward passes under bf16 autocast (weights stay float32); auto: bfloat16 on "
              "AMX / AVX512-BF16 CPUs and bf16 GPUs, else float32.")  # fmt: skip
@device_option(DEFAULTS.device)
@click.option("--nproc-per-node", type=click.IntRange(min=1), default=None,
              help="Launch torchrun with N processes on this machine (FSDP2; same as `torchrun --nproc-per-node N "
              "-m llamanas_deploy finetune ...`).")  # fmt: skip
@threads_option(None, help="torch threads (default: torch's choice).")
@quiet_option
@json_option
def finetune(model, space_name, data, text_field, out, nproc_per_node, threads, quiet, as_json, **fields) -> None:
    """Fine-tune a super-network once so that its sub-networks work; resumable (rerun the same command).

    Many processes: run this command under torchrun (any number of nodes), or add --nproc-per-node.
    """
    from ..distributed import rank
    from ..finetuning import finetune as run_finetune
    from ..space import load_space

    settings = FinetuneSettings(**fields)
    if nproc_per_node is not None:
        _launch(nproc_per_node, settings)
    if threads:
        import torch

        torch.set_num_threads(threads)
    printer = progress_printer(quiet)
    try:
        result = run_finetune(model, load_space(space_name), data, out, settings, text_field=text_field, callback=printer)
    finally:
        printer.close()
    if rank() == 0:  # under torchrun every process gets the result; one prints it
        emit(result.to_dict(), as_json, _render)


def _render(r: dict) -> str:
    rows = [("steps", r.get("steps")), ("compute dtype", r.get("run", {}).get("compute_dtype")),
            ("loss (full)", r.get("final_loss_full")), ("loss (sub-network)", r.get("final_loss_sub"))]  # fmt: skip
    return f"fine-tuned super-network written to {r['out']}\n" + table(rows, ["", "value"])


def _launch(nproc: int, settings: FinetuneSettings) -> None:
    """Run this command again under torchrun in `nproc` processes and exit with its status."""
    import subprocess
    import sys

    from ..distributed import check_batch, launched, torchrun_command

    if launched():
        return  # already one of torchrun's processes: the launcher decided the world size
    check_batch(settings.batch_size, settings.micro_batch_size, nproc)
    raise SystemExit(subprocess.call(torchrun_command(nproc, _without_nproc(sys.argv[1:]))))


def _without_nproc(args: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in args:
        if skip or arg.startswith("--nproc-per-node="):
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        else:
            kept.append(arg)
    return kept
