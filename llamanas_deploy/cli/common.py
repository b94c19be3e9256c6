"""Options and output helpers shared by the commands: results on stdout, logs and progress on stderr.

Option groups are defined once here; choices come from `concepts.py` and the registries, and
defaults from the settings dataclasses the commands fill in, so no command re-types them.
"""

from __future__ import annotations

import json
import math
import sys
import weakref
from typing import Any, Callable, Sequence

import click

from ..concepts import CLOCKS, DEVICES, max_threads
from ..progress import Progress


class FiniteFloat(click.FloatRange):
    """A float option: NaN and infinities are refused (exit 2, one line naming the option), then the range."""

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


POSITIVE = FiniteFloat(min=0, min_open=True)  # a limit, a rate, a tolerance: finite and > 0


class ThreadCount(click.IntRange):
    """A thread count from 1 to this machine's logical cores (more would only oversubscribe it)."""

    name = "threads"

    def __init__(self) -> None:
        super().__init__(min=1)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        count = super().convert(value, param, ctx)
        if count > max_threads():
            self.fail(f"{count} is more than this machine's {max_threads()} logical cores.", param, ctx)
        return count


json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
space_option = click.option(
    "--space", "space_name", default="tiny", show_default=True, help="Built-in space name or space JSON file."
)
quiet_option = click.option("--quiet", is_flag=True, help="No progress bars (stage lines still go to stderr).")

MODEL_HELP = "Super-network: checkpoint dir, its config.json, a built-in name (tiny) or a packaged one (smollm2-135m)."


class AliasedOption(click.Option):
    """An option whose later names are older spellings: accepted, but --help shows only the first."""

    def get_help_record(self, ctx: click.Context):
        shown, self.opts = self.opts, self.opts[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown


def model_option(default: str | None = "tiny", help: str = MODEL_HELP, aliases: Sequence[str] = ()) -> Callable:
    """`--model`, one name and one help text everywhere; `aliases` are older flag names, kept hidden."""
    return click.option("--model", *aliases, "model", cls=AliasedOption, default=default,
                        show_default=default is not None, help=help)  # fmt: skip


def device_option(default: str = "cpu") -> Callable:
    return click.option("--device", type=click.Choice(DEVICES), default=default, show_default=True)


def clock_option(default: str | None) -> Callable:
    help = "wall: elapsed time. cpu: the thread's CPU time (--threads 1; on a shared machine)."
    return click.option("--clock", type=click.Choice(CLOCKS), default=default, show_default=default is not None,
                        help=help if default else help + " [the predictor's, else wall]")  # fmt: skip


def threads_option(default: int | None, help: str = "Fixed intra-op thread count.", here: bool = True) -> Callable:
    """`--threads`: 1 to the machine's logical cores (`ThreadCount`); a larger count is refused, not clamped.

    With `here=False` (the work may run on another machine, e.g. a Ray node) only positivity is
    checked here; the library checks the count against the cores of the machine that runs it.
    """
    kind, limit = (ThreadCount(), "this machine's") if here else (click.IntRange(min=1), "the measuring machine's")
    return click.option("--threads", default=default, show_default=default is not None, type=kind,
                        help=f"{help} At most {limit} logical cores.")  # fmt: skip


def shape_options(defaults: Any | None) -> Callable:
    """--batch-size, --prompt-len, --context-len, --gen-len; `defaults` a `Shapes`, or None for 'the predictor's'."""
    specs = (
        ("--batch-size", "batch_size", "Batch."),
        ("--prompt-len", "prompt_len", "Prefill tokens."),
        ("--context-len", "context_len", "KV cache for decode."),
        ("--gen-len", "gen_len", "Tokens generated (throughput)."),
    )
    options = [
        click.option(flag, name, type=click.IntRange(min=1), default=getattr(defaults, name, None),
                     show_default=defaults is not None,
                     help=text if defaults is not None else f"{text} [the predictor's, else the profiler's]")
        for flag, name, text in specs
    ]  # fmt: skip
    return _stack(options)


def protocol_options(defaults: Any, noise: bool = True) -> Callable:
    """--warmup, --repeats, --visits (and --max-cv, --attempts with `noise`), defaults from a `Protocol`."""
    options = [
        click.option("--warmup", default=defaults.warmup, show_default=True, type=click.IntRange(min=0),
                     help="Untimed runs per figure."),
        click.option("--repeats", default=defaults.repeats, show_default=True, type=click.IntRange(min=3),
                     help="Timed runs per set."),
        click.option("--visits", default=defaults.visits, show_default=True, type=click.IntRange(min=1),
                     help="Separate measurements of each sub-network, passes apart, combined."),
    ]  # fmt: skip
    if noise:
        options += [
            click.option("--max-cv", default=defaults.max_cv, show_default=True,
                         type=POSITIVE,
                         help="A set noisier than this (robust CV) is re-measured, then flagged."),
            click.option("--attempts", "max_attempts", default=defaults.max_attempts, show_default=True,
                         type=click.IntRange(min=1), help="Sets at most per figure."),
        ]  # fmt: skip
    return _stack(options)


def _stack(options: list[Callable]) -> Callable:
    def decorate(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def shapes_from(opts: dict[str, Any], base: dict[str, int] | None = None):
    """A `Shapes` from the shape options; unset ones from `base` (e.g. a predictor's shapes), else the defaults."""
    from ..profiler.base import Shapes

    fallback = base or Shapes().to_dict()
    return Shapes(**{k: opts[k] if opts.get(k) is not None else fallback[k] for k in Shapes().to_dict()})


def protocol_from(opts: dict[str, Any]):
    """A `Protocol` from the protocol options (absent ones keep the dataclass defaults)."""
    from dataclasses import fields

    from ..profiler.stats import Protocol

    return Protocol(**{f.name: opts[f.name] for f in fields(Protocol) if opts.get(f.name) is not None})


def emit(result: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], str]) -> None:
    """Print `result` as one JSON object, or as the human-readable text `render` makes of it."""
    from ..jsonfiles import finite

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
