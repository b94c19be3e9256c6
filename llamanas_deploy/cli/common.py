"""Options and output helpers shared by the commands: results on stdout, logs on stderr."""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import click

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
space_option = click.option(
    "--space", "space_name", default="tiny", show_default=True, help="Built-in space name or space JSON file."
)


def emit(result: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str]) -> None:
    """Print `result` as one JSON object, or as the human-readable text `render` makes of it."""
    click.echo(json.dumps(result, default=str) if as_json else render(result))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain aligned text table."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _numeric(text: str) -> bool:
    return text.replace(",", "").replace(".", "").replace("-", "").replace("x", "").replace("%", "").isdigit()


def log(message: str) -> None:
    click.echo(message, err=True)
