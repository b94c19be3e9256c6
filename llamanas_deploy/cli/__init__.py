"""The `llamanas` command. Sub-commands are imported only when invoked, so `--help` is instant.

Adding a command is one line in `COMMANDS`: name -> "module:attribute" of a click command.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import click

from ..errors import BadInputError, LlamanasError

COMMANDS = {
    "space": ("llamanas_deploy.cli.space_cmd:space", "Show a search space or sample sub-networks from it."),
    "prepare": ("llamanas_deploy.cli.prepare_cmd:prepare", "Order neurons by importance and measure the layer drop order."),
    "profile": ("llamanas_deploy.cli.profile_cmd:profile", "Measure sampled sub-networks on this device."),
    "targets": ("llamanas_deploy.cli.profile_cmd:targets", "List the hardware profiles present."),
    "subnet": ("llamanas_deploy.cli.subnet_cmd:subnet", "Cost of a sub-network, or extract it as a model."),
    "import-gguf": ("llamanas_deploy.cli.import_cmd:import_gguf", "Import a GGUF LLaMA checkpoint as a Hugging Face directory."),
    "fit": ("llamanas_deploy.cli.predict_cmd:fit", "Fit an XGBoost latency predictor on a hardware profile."),
    "predict": ("llamanas_deploy.cli.predict_cmd:predict", "Predict latency of sub-networks with a fitted predictor."),
    "search": ("llamanas_deploy.cli.search_cmd:search", "Search for a device-specific sub-network (NSGA-II, LINAS, random)."),
    "finetune": ("llamanas_deploy.cli.finetune_cmd:finetune", "Fine-tune a super-network once (one-shot, resumable)."),
    "evaluate": ("llamanas_deploy.cli.evaluate_cmd:evaluate", "Perplexity or multiple-choice accuracy of a sub-network."),
    "export": ("llamanas_deploy.cli.export_cmd:export", "Export a sub-network as a verified, quantized ONNX Runtime artifact."),
    "generate": ("llamanas_deploy.cli.export_cmd:generate", "Generate text from an artifact with ONNX Runtime alone."),
    "bench": ("llamanas_deploy.cli.export_cmd:bench", "Measure an artifact on this device; compare with its prediction."),
    "run": ("llamanas_deploy.cli.run_cmd:run", "The whole loop on this device: profile, fit, search, export, measure."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attribute = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in sorted(COMMANDS)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="llamanas-deploy")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """llamanas: hardware-aware LLaMA-NAS, from device profile to ONNX Runtime artifact."""
    ctx.obj = {"debug": debug}


def main(argv: list[str] | None = None) -> None:
    """Entry point: exit 0 on success, 2 on bad input (one line), 1 on anything else."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        cli.main(args=args, prog_name="llamanas", standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.ClickException as err:  # a bad option or argument: one line too, naming the command
        where = f"{err.ctx.command_path}: " if getattr(err, "ctx", None) else ""
        click.echo(f"error: {where}{_one_line(err.format_message())}", err=True)
        sys.exit(2)
    except BadInputError as err:
        _fail(_with_flag(err, args), 2, debug)
    except (LlamanasError, Exception) as err:  # noqa: BLE001 - the CLI's one place for errors
        _fail(err, 1, debug)
    sys.exit(0)


def _with_flag(err: BadInputError, args: list[str]) -> BadInputError:
    """A library error about a parameter, restated with the flag of the invoked command that sets it."""
    flag = _flag_for(err.param, args) if err.param else None
    if flag is None:
        return err
    restated = BadInputError(f"{flag}: {err.detail}")
    restated.__traceback__ = err.__traceback__
    return restated


def _flag_for(param: str, args: list[str]) -> str | None:
    ctx = click.Context(cli)
    command: click.Command | None = cli
    for word in (a for a in args if not a.startswith("-")):
        if not isinstance(command, click.Group):
            break
        command = command.get_command(ctx, word)
        if command is None:
            return None
    for option in command.params if command is not None else []:
        if option.name == param and isinstance(option, click.Option):
            return option.opts[0]
    return None


def _fail(err: Exception, code: int, debug: bool) -> None:
    from .common import close_progress  # only on failure: at module level it would slow `llamanas --help`

    close_progress()
    if os.environ.get("RANK", "0") != "0":  # under torchrun every rank fails alike; rank 0 says it once
        sys.exit(code)
    if debug:
        traceback.print_exc()
    text = str(err).strip()
    # the toolkit's own messages are one line, so a line break in one came from a name (a path): shown escaped;
    # a library's message can run on for pages, so its first line stands for it
    message = _one_line(text) if isinstance(err, LlamanasError) else text.splitlines()[0] if text else ""
    message = message or type(err).__name__
    prefix = "error" if isinstance(err, LlamanasError) else f"error ({type(err).__name__})"
    click.echo(f"{prefix}: {message}", err=True)
    sys.exit(code)


def _one_line(text: str) -> str:
    return text.replace("\n", "\\n").replace("\r", "\\r")
