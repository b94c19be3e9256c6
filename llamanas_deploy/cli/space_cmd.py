"""`llamanas space show|sample`."""

from __future__ import annotations

import click

from ..space import SAMPLING_STRATEGIES, SearchSpace, load_space
from .common import emit
from .options import JSON, SEED, default_of


@click.group()
def space() -> None:
    """Show a search space or sample sub-networks from it."""


@space.command()
@click.argument("name")
@JSON()
def show(name: str, as_json: bool) -> None:
    """Show space NAME (built-in name or space JSON file)."""
    s = load_space(name)
    result = s.to_dict() | s.derived()  # loads back as the same space
    emit(result, as_json, _render)


def _render(r: dict) -> str:
    dims = "\n".join(
        f"  {key}: {spec['choices']} (keep {spec['policy']} units)" for key, spec in r["layer_dims"].items()
    )
    return (
        f"space {r['name']} ({r['id']}): {r['description']}\n"
        f"  super-network: {r['super_network']['num_hidden_layers']} layers, "
        f"intermediate size {r['super_network']['intermediate_size']}\n"
        f"  depth: {r['depth']['choices']} (keep {r['depth']['policy']} layers)\n{dims}\n"
        f"  points: {_count(r['num_points'])} (depth choices x widths^layers, as the paper counts)\n"
        f"  distinct sub-networks: {_count(r['num_distinct'])}"
    )


def _count(n: int) -> str:
    """Thousands separated up to 10^15, then scientific (an exact count of 10^48 tells a reader nothing more)."""
    if n < 10**15:
        return f"{n:,}"
    digits = str(n)
    return f"{digits[0]}.{digits[1:4]}e+{len(digits) - 1}"


@space.command()
@click.argument("name")
@click.option("-n", "--num", "n", default=10, show_default=True, type=click.IntRange(min=1))
@SEED(SearchSpace.sample, note="of the sampling.")
@click.option(
    "--strategy",
    type=click.Choice(SAMPLING_STRATEGIES),
    default=default_of(SearchSpace.sample, "strategy"),
    show_default=True,
    help="stratified: smallest and largest first, then depth x total-width strata.",
)
def sample(name: str, n: int, seed: int, strategy: str) -> None:
    """Print N sub-network configs of space NAME, one JSON object per line."""
    s = load_space(name)
    for cfg in s.sample(n, seed, strategy):
        click.echo(cfg.to_json())
