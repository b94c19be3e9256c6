"""Output helpers shared by the commands: results on stdout, logs and progress on stderr.

The options the commands share are in `options.py`.
"""

from __future__ import annotations

import json
import sys
import weakref
from typing import Any, Callable, Sequence

import click

from ..jsonfiles import finite
from ..progress import Progress


def emit(result: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str]) -> None:
    """Print `result` as one JSON object, or as the human-readable text `render` makes of it."""
    click.echo(json.dumps(finite(result), default=str, allow_nan=False) if as_json else render(result))


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


class ProgressPrinter:
    """A progress callback for the library: one tqdm bar per stage on stderr, messages as log lines.

    With `bars=False` (`--quiet`) only the messages are printed.
    """

    def __init__(self, bars: bool = True):
        self.bars = bars
        self._bar = None
        self._stage: str | None = None

    def __call__(self, event: Progress) -> None:
        if event.message:
            self._write(event.message)
        if not self.bars or event.total is None:
            return
        if self._stage != event.stage or self._bar is None or self._bar.total != event.total:
            self._open(event)
        self._bar.n = event.done
        if event.status:
            self._bar.set_postfix_str(event.status, refresh=False)
        self._bar.refresh()
        if event.done >= event.total:
            self.close()

    def _open(self, event: Progress) -> None:
        from tqdm import tqdm

        self.close()
        _OPEN_PRINTERS.add(self)
        self._stage = event.stage
        self._bar = tqdm(total=event.total, initial=event.done, desc=event.stage, unit=event.unit or "it",
                         file=sys.stderr, dynamic_ncols=True, leave=False)  # fmt: skip

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            log(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._stage = None, None


_OPEN_PRINTERS: "weakref.WeakSet[ProgressPrinter]" = weakref.WeakSet()


def close_progress() -> None:
    """Close every bar still drawn, so that an error message gets a line of its own."""
    for printer in list(_OPEN_PRINTERS):
        printer.close()


def progress_printer(quiet: bool) -> ProgressPrinter:
    return ProgressPrinter(bars=not quiet)
