"""`llamanas prepare`: a pretrained model as a super-network (neurons ordered, layer drop order measured)."""

from __future__ import annotations

from pathlib import Path

import click

from .common import emit, progress_printer
from .options import DATA, JSON, MAX_TOKENS, MODEL, NEW_DIRECTORY, OUT, QUIET, SEQ_LEN


# the defaults are `prepare_supernet`'s, restated: reading them would import torch (`model.importance`)
@click.command()
@MODEL(default=None, required=True)
@OUT(required=True, note=NEW_DIRECTORY)
@DATA(default="pydoc-train", note="For calibration.")
@MAX_TOKENS(default=4096)
@SEQ_LEN(default=256)
@QUIET()
@JSON()
def prepare(model: str, out: Path, data: str, max_tokens: int, seq_len: int, quiet: bool, as_json: bool) -> None:
    """Order every MLP's neurons by importance and measure which layers to drop first (block influence).

    Writes a new super-network directory with `importance.json`; its `drop_order` is what a space's
    `importance` depth policy lists.
    """
    from ..model.importance import prepare_supernet  # imports torch

    out, importance = prepare_supernet(model, out, data, max_tokens, seq_len, progress_printer(quiet))
    emit({"out": str(out), **importance.to_dict()}, as_json, _render)


def _render(r: dict) -> str:
    rows = [f"prepared super-network: {r['out']}",
            f"calibration: {r['calibration']['tokens']:,} tokens of {r['calibration']['data']}",
            "layer  block influence"]  # fmt: skip
    rows += [f"{i:>5}  {v:.4f}" for i, v in enumerate(r["block_influence"])]
    rows.append(f"drop order (least influential first): {r['drop_order']}")
    return "\n".join(rows)
