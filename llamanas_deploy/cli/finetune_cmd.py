"""`llamanas finetune`: one-shot fine-tuning of a super-network over a search space."""

from __future__ import annotations

import subprocess
import sys

import click

from ..distributed import check_batch, launched, rank, torchrun_command
from ..finetuning import COMPUTE_DTYPES, SAVE_DTYPES, STRATEGIES, FinetuneSettings
from ..finetuning import finetune as run_finetune
from ..space import load_space
from .common import emit, progress_printer, table
from .options import (
    DATA, DEVICE, JSON, MODEL, OUT, POSITIVE, QUIET, SEED, SEQ_LEN, SPACE, TEXT_FIELD, THREADS, FiniteFloat, default_of,
)  # fmt: skip


@click.command()
@MODEL()
@SPACE()
@DATA(multiple=True, required=True, note="For training; repeatable.")
@TEXT_FIELD(run_finetune)
@OUT(required=True, note="the checkpoint directory; rerunning the same command resumes.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=default_of(FinetuneSettings, "strategy"),
              show_default=True,
              help="paper: full + one random sub-network per step; sandwich: full + smallest + random; "
              "full: standard training (baseline).")  # fmt: skip
@click.option("--distill", is_flag=True, help="Sub-networks learn from the full network's logits (in-place distillation).")
@click.option("--reorder-neurons", is_flag=True, help="Sort each MLP's neurons by importance once, before training.")
@click.option("--from-scratch", is_flag=True, help="Start from random weights (only config.json is read).")
@click.option("--steps", default=default_of(FinetuneSettings, "steps"), show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=default_of(FinetuneSettings, "batch_size"), show_default=True,
              type=click.IntRange(min=1), help="Training rows per step, over all processes.")  # fmt: skip
@SEQ_LEN(FinetuneSettings)
@click.option("--lr", default=default_of(FinetuneSettings, "lr"), show_default=True, type=POSITIVE,
              help="Peak learning rate (the paper: 1e-5).")  # fmt: skip
@click.option("--warmup-steps", default=default_of(FinetuneSettings, "warmup_steps"), show_default=True,
              type=click.IntRange(min=0))  # fmt: skip
@click.option("--weight-decay", default=default_of(FinetuneSettings, "weight_decay"), show_default=True,
              type=FiniteFloat(min=0))  # fmt: skip
@SEED(FinetuneSettings, note="of everything random: the data order, each step's sub-networks, random weights.")
@click.option("--save-every", default=default_of(FinetuneSettings, "save_every"), show_default=True,
              type=click.IntRange(min=1), help="Checkpoint every N steps.")  # fmt: skip
@click.option("--save-dtype", type=click.Choice(SAVE_DTYPES), default=default_of(FinetuneSettings, "save_dtype"),
              show_default=True)  # fmt: skip
@click.option("--micro-batch-size", default=default_of(FinetuneSettings, "micro_batch_size"),
              type=click.IntRange(min=1),
              help="Rows per forward pass in each process (gradient accumulation) [default: all its rows].")  # fmt: skip
@click.option("--activation-checkpointing", is_flag=True, help="Recompute each decoder layer in the backward pass.")
@click.option("--compute-dtype", type=click.Choice(COMPUTE_DTYPES),
              default=default_of(FinetuneSettings, "compute_dtype"), show_default=True,
              help="bfloat16: forward passes under bf16 autocast (weights stay float32); auto: bfloat16 on "
              "AMX / AVX512-BF16 CPUs and bf16 GPUs, else float32.")  # fmt: skip
@DEVICE(FinetuneSettings)
@click.option("--nproc-per-node", type=click.IntRange(min=1), default=None,
              help="Launch torchrun with N processes on this machine (FSDP2; same as `torchrun --nproc-per-node N "
              "-m llamanas_deploy finetune ...`).")  # fmt: skip
@THREADS(note="[torch's choice]")
@QUIET()
@JSON()
def finetune(model, space_name, data, text_field, out, nproc_per_node, threads, quiet, as_json, **fields) -> None:
    """Fine-tune a super-network once so that its sub-networks work; resumable (rerun the same command).

    Many processes: run this command under torchrun (any number of nodes), or add --nproc-per-node.
    """
    settings = FinetuneSettings(**fields)
    if nproc_per_node is not None:
        _launch(nproc_per_node, settings)
    if threads:
        import torch  # heavy: only when asked

        torch.set_num_threads(threads)
    printer = progress_printer(quiet)
    try:
        result = run_finetune(model, load_space(space_name), data, settings, out=out, text_field=text_field, callback=printer)
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
