"""`llamanas subnet stats|extract`."""

from __future__ import annotations

from pathlib import Path

import click

from ..analytics import compare_with_full
from ..model.families import read_shape
from ..space import SearchSpace, load_space
from ..subnet_config import SubnetConfig
from .common import emit, json_option, model_option, progress_printer, space_option, table

SUBNET_HELP = "Sub-network: 'largest', 'smallest', inline JSON, a config file, or FRONT.json#INDEX."


def resolve_subnet(space: SearchSpace, value: str, many: bool = False) -> SubnetConfig | list[SubnetConfig]:
    """A `--subnet` value through `space.resolve` (`resolve_many` with `many`); errors about
    inline JSON name the option, those about a file name the file."""
    source = "--subnet" if value.lstrip().startswith("{") else None
    return space.resolve_many(value, source) if many else space.resolve(value, source)


@click.group()
def subnet() -> None:
    """Cost of a sub-network, or extract it as a standalone model."""


@subnet.command()
@model_option(aliases=("--config",))
@space_option
@click.option("--subnet", "subnet_arg", required=True, help=SUBNET_HELP + " A file may hold many (JSON lines).")
@click.option("--prompt-len", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--context-len", default=128, show_default=True, type=click.IntRange(min=0))
@json_option
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
@model_option()
@space_option
@click.option("--subnet", "subnet_arg", required=True, help=SUBNET_HELP)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="New directory to write.")
def extract(model: str, space_name: str, subnet_arg: str, out: Path) -> None:
    """Slice a sub-network out of the super-network and save it as a standalone model directory."""
    from ..model.supernet import extract_subnet

    space = load_space(space_name)
    click.echo(str(extract_subnet(model, space, resolve_subnet(space, subnet_arg), out, progress_printer(False))))
