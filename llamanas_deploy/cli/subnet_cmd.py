"""`llamanas subnet stats|extract`."""

from __future__ import annotations

from pathlib import Path

import click

from ..analytics import compare_with_full
from ..model.families import read_shape
from ..profiler.base import Shapes
from ..space import SearchSpace, load_space
from ..subnet_config import SubnetConfig
from .common import emit, progress_printer, table
from .options import CONTEXT_LEN, JSON, MANY_SUBNETS, MODEL, NEW_DIRECTORY, OUT, PROMPT_LEN, SPACE, SUBNET


def resolve_subnet(space: SearchSpace, value: str, many: bool = False) -> SubnetConfig | list[SubnetConfig]:
    """A `--subnet` value through `space.resolve` (`resolve_many` with `many`); errors about
    inline JSON name the option, those about a file name the file."""
    source = "--subnet" if value.lstrip().startswith("{") else None
    return space.resolve_many(value, source) if many else space.resolve(value, source)


@click.group()
def subnet() -> None:
    """Cost of a sub-network, or extract it as a standalone model."""


@subnet.command()
@MODEL(old=("--config",))
@SPACE()
@SUBNET(required=True, note=MANY_SUBNETS)
@PROMPT_LEN(Shapes)
@CONTEXT_LEN(Shapes, type=click.IntRange(min=0))
@JSON()
def stats(model: str, space_name: str, subnet_arg: str, prompt_len: int, context_len: int, as_json: bool) -> None:
    """Parameters, fp16 size, FLOPs and KV-cache bytes of sub-networks, against the full network."""
    shape = read_shape(model)
    space = load_space(space_name)
    space.check_super_network(shape, model)
    subnets = resolve_subnet(space, subnet_arg, many=True)
    emit(compare_with_full(shape, space, subnets, prompt_len, context_len), as_json, _render)


def _render(r: dict) -> str:
    entries = [("full", r["full"], 1.0)] + [(row["id"], row, row["size_ratio"]) for row in r["subnets"]]
    rows = [
        (
            name,
            s["num_layers"],
            s["params"],
            s["fp16_gib"],
            s["prefill_flops"] / 1e9,
            s["decode_flops"] / 1e6,
            s["kv_cache_bytes_per_token"],
            f"{ratio:.2f}x",
        )
        for name, s, ratio in entries
    ]
    headers = ["sub-network", "layers", "params", "fp16 GiB", "prefill GFLOP", "decode MFLOP", "KV B/token", "smaller"]
    return table(rows, headers)


@subnet.command()
@MODEL()
@SPACE()
@SUBNET(required=True)
@OUT(required=True, note=NEW_DIRECTORY)
def extract(model: str, space_name: str, subnet_arg: str, out: Path) -> None:
    """Slice a sub-network out of the super-network and save it as a standalone model directory."""
    from ..model.supernet import extract_subnet  # imports torch

    space = load_space(space_name)
    click.echo(str(extract_subnet(model, space, resolve_subnet(space, subnet_arg), out, progress_printer(False))))
