"""`llamanas prepare`: a pretrained model as a super-network (neurons ordered, layer drop order measured)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import emit, json_option, model_option, progress_printer, quiet_option


@click.command()
@model_option(default=None)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="New model directory (must not exist or be empty).")  # fmt: skip
@click.option("--data", default="pydoc-train", show_default=True,
              help="Calibration text: a file or a built-in corpus (pydoc, pydoc-train, pydoc-heldout).")  # fmt: skip
@click.option("--max-tokens", default=4096, show_default=True, type=click.IntRange(min=2))
@click.option("--seq-len", default=256, show_default=True, type=click.IntRange(min=2))
@quiet_option
@json_option
def prepare(model: str, out: Path, data: str, max_tokens: int, seq_len: int, quiet: bool, as_json: bool) -> None:
    """Order every MLP's neurons by importance and measure which layers to drop first (block influence).

    Writes a new super-network directory with `importance.json`; its `drop_order` is what a space's
    `importance` depth policy lists.
    """
    from ..model.importance import prepare_supernet

    if model is None:
        raise click.UsageError("--model is required (a checkpoint directory or a model name)")
    out, importance = prepare_supernet(model, out, data, max_tokens, seq_len, progress_printer(quiet))
    emit({"out": str(out), **importance.to_dict()}, as_json, _render)


def _render(r: dict) -> str:
    rows = [f"prepared super-network: {r['out']}",
            f"calibration: {r['calibration']['tokens']:,} tokens of {r['calibration']['data']}",
            "layer  block influence"]  # fmt: skip
    rows += [f"{i:>5}  {v:.4f}" for i, v in enumerate(r["block_influence"])]
    rows.append(f"drop order (least influential first): {r['drop_order']}")
    return "\n".join(rows)
