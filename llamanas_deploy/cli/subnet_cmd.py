"""`llamanas subnet stats|extract`."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import click

from ..analytics import subnet_stats
from ..errors import BadInputError
from ..model.families import read_shape
from ..space import load_space
from ..subnet_config import read_subnet_arg, read_subnets
from .common import emit, json_option, log, space_option, table


@click.group()
def subnet() -> None:
    """Cost of a sub-network, or extract it as a standalone model."""


@subnet.command()
@click.option("--config", "config_path", default="tiny", show_default=True, help="Model dir, config.json or name.")
@space_option
@click.option("--subnet", "subnet_file", required=True, help="Sub-network JSON file (one or many lines).")
@click.option("--prompt-len", default=128, show_default=True, type=click.IntRange(min=1))
@click.option("--context-len", default=128, show_default=True, type=click.IntRange(min=0))
@json_option
def stats(config_path: str, space_name: str, subnet_file: str, prompt_len: int, context_len: int, as_json: bool) -> None:
    """Parameters, fp16 size, FLOPs and KV-cache bytes of sub-networks, against the full network."""
    shape = read_shape(config_path)
    space = load_space(space_name)
    space.check_super_network(shape, config_path)
    subnets = [space.validate(c, _source(subnet_file)) for c in _read(subnet_file)]
    full = subnet_stats(shape, space.largest, prompt_len, context_len)
    rows = []
    for cfg in subnets:
        s = subnet_stats(shape, cfg, prompt_len, context_len)
        rows.append({"id": cfg.id, "subnet": cfg.to_dict(), **s.to_dict(), "size_ratio": full.params / s.params})
    result = {"space_id": space.id, "full": full.to_dict(), "subnets": rows}
    emit(result, as_json, _render)


def _read(value: str):
    return read_subnets(value) if "#" not in value and not value.lstrip().startswith("{") else [read_subnet_arg(value)]


def _source(value: str) -> str:
    """How an error names a `--subnet` value: the file, or the option itself for inline JSON."""
    return "--subnet" if value.lstrip().startswith("{") else value


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
@click.option("--model", "model_path", default="tiny", show_default=True, help="Super-network dir or built-in name.")
@space_option
@click.option("--subnet", "subnet_arg", required=True, help="Sub-network JSON file, inline JSON or FRONT.json#INDEX.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="New directory to write.")
def extract(model_path: str, space_name: str, subnet_arg: str, out_dir: str) -> None:
    """Slice a sub-network out of the super-network and save it as a standalone model directory."""
    from ..model.supernet import SuperNetwork

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise BadInputError(f"--out {out}: directory exists and is not empty; refusing to overwrite it")
    space = load_space(space_name)
    cfg = space.validate(read_subnet_arg(subnet_arg), _source(subnet_arg))
    supernet = SuperNetwork.load(model_path)
    supernet.check_space(space)
    log(f"extracting {cfg.id} ({cfg.num_layers} layers) from {supernet.source}")
    with tempfile.TemporaryDirectory(dir=out.parent if out.parent.exists() else None) as tmp:
        supernet.save_subnet(cfg, tmp, space)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        shutil.move(tmp, out)
    click.echo(str(out))
