"""Every option that more than one command takes, each defined once: flag, parameter name, type, help.

A `Shared` is one option's definition; called in a command's decorators it makes that command's
click option: its default is the one the library states (`default_of`: the settings dataclass
field, or the function parameter, named as the option's parameter), `note` ends the help text
where the option's meaning there is the command's own, and `old` lists older spellings, still
accepted for one release with a note on stderr but hidden from --help. Choices come from
`concepts.py`; the options whose choices are a registry's names are in `registry_options.py`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, TypeVar

import click

from ..concepts import CLOCKS, DEVICES, EXPORT_FORMATS, EXPORT_PRECISIONS, GGUF_PRECISIONS, PROFILE_PRECISIONS, max_threads

T = TypeVar("T")


# ---- value types -----------------------------------------------------------------------------
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


# ---- the machinery ---------------------------------------------------------------------------
class Option(click.Option):
    """A value option that also accepts older spellings (`old`): hidden from --help, and when one is
    used a line on stderr names the current spelling. Given both, the current spelling wins."""

    def __init__(self, *args: Any, old: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.old = tuple(old)

    def add_to_parser(self, parser: Any, ctx: click.Context) -> None:
        super().add_to_parser(parser, ctx)
        for flag in self.old:  # a destination of its own, so that `consume_value` sees which spelling came
            parser.add_option(obj=self, opts=[flag], dest=self._old_dest(flag), action="store", nargs=self.nargs)

    def consume_value(self, ctx: click.Context, opts: Mapping[str, Any]) -> Any:
        for flag in (f for f in self.old if self._old_dest(f) in opts):
            click.echo(f"warning: {flag} is deprecated and goes in the next release; use {self.opts[0]}", err=True)
            opts = {self.name: opts[self._old_dest(flag)], **opts}
        return super().consume_value(ctx, opts)

    def _old_dest(self, flag: str) -> str:
        return f"{self.name} {flag}"  # a space: never a parameter's name


def default_of(source: Any, name: str) -> Any:
    """The default the library states for `name`: a settings dataclass's field (an instance's value),
    else a function's (or a class constructor's) parameter."""
    if dataclasses.is_dataclass(source):
        if not isinstance(source, type):
            return getattr(source, name)
        field = next(f for f in dataclasses.fields(source) if f.name == name)
        return field.default if field.default_factory is dataclasses.MISSING else field.default_factory()
    return inspect.signature(source).parameters[name].default


class Shared:
    """One option's definition; `SEED(FitSettings, note="of the split.")` puts it on one command."""

    def __init__(self, flag: str, help: str, name: str | None = None, **attrs: Any) -> None:
        self.flag, self.help, self.attrs = flag, help, attrs
        self.name = name or flag.lstrip("-").replace("-", "_")

    def __call__(self, defaults: Any = None, *, note: str = "", flag: str | None = None, old: Sequence[str] = (),
                 **attrs: Any) -> Callable:  # fmt: skip
        """The option on one command. `defaults`: where its default is stated (see `default_of`), read
        for the parameter's name; without it `default=`, if any. `flag`: this command's spelling, where
        the option is the command's own subject (`profile --precision`). `attrs`: click.option arguments
        that differ here (name, default, type, required, ...)."""
        attrs = {**self.attrs, **attrs}
        name = attrs.pop("name", self.name)
        if defaults is not None:
            attrs["default"] = default_of(defaults, name)
        if attrs.get("default") is None:  # no default (click 8.5 takes an explicit None as one: required unchecked)
            attrs.pop("default", None)
        attrs.setdefault("show_default", "default" in attrs and not attrs.get("is_flag"))
        help = f"{self.help} {note}" if note else self.help
        return click.option(flag or self.flag, name, cls=Option, old=old, help=help, **attrs)


def stack(*options: Callable) -> Callable:
    """Several options as one decorator, listed in --help in the order given."""

    def decorate(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def settings_from(settings: type[T], opts: Mapping[str, Any], **given: Any) -> T:
    """A `settings` dataclass from the options named as its fields and the `given` fields; an option
    left unset (None) keeps the field's default."""
    values = {f.name: opts[f.name] for f in dataclasses.fields(settings) if opts.get(f.name) is not None}
    return settings(**(values | given))


# ---- what a command works on -----------------------------------------------------------------
MODEL = Shared("--model", "Super-network: checkpoint dir, its config.json, a built-in name (tiny) or a packaged one "
               "(smollm2-135m).", default="tiny")  # fmt: skip
SPACE = Shared("--space", "Built-in space name or space JSON file.", name="space_name", default="tiny")
SUBNET = Shared("--subnet", "Sub-network: 'largest', 'smallest', inline JSON, a config file, or FRONT.json#INDEX.",
                name="subnet_arg")  # fmt: skip
MANY_SUBNETS = "A file may hold many (JSON lines)."  # SUBNET's note where a command takes several
DATA = Shared("--data", "Text: a .txt file, JSON lines with a text field (.jsonl), Alpaca .json, or a built-in corpus "
              "(pydoc, pydoc-train, pydoc-heldout).")  # fmt: skip
TEXT_FIELD = Shared("--text-field", "Field holding the text in JSON lines data.")
PREDICTOR = Shared("--predictor", "Latency predictor file written by `llamanas fit`.")
ARTIFACT = Shared("--artifact", "Artifact directory from `llamanas export`.", required=True,
                  type=click.Path(path_type=Path))  # fmt: skip
OUT = Shared("--out", "Output:", type=click.Path(file_okay=False, path_type=Path))
NEW_DIRECTORY = "a new directory (it must not exist or be empty)."  # OUT's note where a command creates one

# ---- where and how it runs -------------------------------------------------------------------
PROFILE_PRECISION = Shared("--profile-precision", "Precision of the profiled backend: fp32 / bf16 (torch); "
                           f"fp32 / int8 / int4 (onnxruntime); {' / '.join(GGUF_PRECISIONS)} (llamacpp).",
                           name="precision", type=click.Choice(PROFILE_PRECISIONS))  # fmt: skip
EXPORT_PRECISION = Shared("--export-precision", "Precision of the artifact: ONNX on cpu: fp32, int8, int4; on cuda: "
                          f"fp16, int4 (MatMulNBits over fp16); GGUF: {', '.join(GGUF_PRECISIONS)}.", name="precision",
                          type=click.Choice(EXPORT_PRECISIONS + GGUF_PRECISIONS))  # fmt: skip
EXPORT_FORMAT = Shared("--format", "onnx: an ONNX Runtime artifact. gguf: a GGUF file llama.cpp runs (the llamacpp "
                       "extra).", name="export_format", type=click.Choice(EXPORT_FORMATS), default="onnx")  # fmt: skip
DEVICE = Shared("--device", "Device that runs the model.", type=click.Choice(DEVICES))
THREADS = Shared("--threads", "Intra-op threads, at most the logical cores of the machine that runs them.",
                 type=ThreadCount())  # fmt: skip
CLOCK = Shared("--clock", "wall: elapsed time. cpu: the thread's CPU time (--threads 1; on a shared machine).",
               type=click.Choice(CLOCKS))  # fmt: skip
SEED = Shared("--seed", "Seed", type=int)
RAY = Shared("--ray", "Run on a Ray cluster: auto (this machine's cluster, else a local one) or a cluster address.",
             name="address", metavar="auto|ADDRESS")  # fmt: skip

# ---- what is measured and how (the fields of `Shapes` and `Protocol`) ------------------------
SAMPLES = Shared("--samples", "Sub-networks to profile", type=click.IntRange(min=1))
BATCH_SIZE = Shared("--batch-size", "Batch.", type=click.IntRange(min=1))
PROMPT_LEN = Shared("--prompt-len", "Prefill tokens.", type=click.IntRange(min=1))
CONTEXT_LEN = Shared("--context-len", "KV cache for decode.", type=click.IntRange(min=1))
GEN_LEN = Shared("--gen-len", "Tokens generated (throughput).", type=click.IntRange(min=1))
WARMUP = Shared("--warmup", "Untimed runs per figure.", type=click.IntRange(min=0))
REPEATS = Shared("--repeats", "Timed runs per set.", type=click.IntRange(min=3))
VISITS = Shared("--visits", "Separate measurements of each sub-network, passes apart, combined.",
                type=click.IntRange(min=1))  # fmt: skip
MAX_CV = Shared("--max-cv", "A set noisier than this (robust CV) is re-measured, then flagged.", type=POSITIVE)
ATTEMPTS = Shared("--attempts", "Sets at most per figure.", name="max_attempts", type=click.IntRange(min=1))

# ---- searching and evaluating ----------------------------------------------------------------
MAX_LATENCY = Shared("--max-latency", "Budget on the predicted latency, in ms.", name="max_latency_ms", type=POSITIVE)
POPULATION = Shared("--population", "Sub-networks per generation.", type=click.IntRange(min=2))
EVALUATIONS = Shared("--evaluations", "Sub-networks evaluated for real.", type=click.IntRange(min=2))
EVAL_TOKENS = Shared("--eval-tokens", "Held-out tokens per perplexity evaluation.", type=click.IntRange(min=1))
SEQ_LEN = Shared("--seq-len", "Tokens per sequence.", type=click.IntRange(min=2))
MAX_TOKENS = Shared("--max-tokens", "Read at most this many tokens of the text.", type=click.IntRange(min=2))

# ---- output ----------------------------------------------------------------------------------
JSON = Shared("--json", "Print one JSON object on stdout.", name="as_json", is_flag=True)
QUIET = Shared("--quiet", "No progress bars (stage lines still go to stderr).", is_flag=True)


def shape_options(defaults: Any = None, note: str = "") -> Callable:
    """--batch-size, --prompt-len, --context-len, --gen-len; `defaults` a `Shapes` (class or instance),
    or None where the command takes them from elsewhere (say so in `note`)."""
    return stack(*(option(defaults, note=note) for option in (BATCH_SIZE, PROMPT_LEN, CONTEXT_LEN, GEN_LEN)))


def protocol_options(defaults: Any, noise: bool = True) -> Callable:
    """--warmup, --repeats, --visits (and --max-cv, --attempts with `noise`), defaults from a `Protocol`."""
    options = (WARMUP, REPEATS, VISITS, *((MAX_CV, ATTEMPTS) if noise else ()))
    return stack(*(option(defaults) for option in options))
