"""`llamanas profile` (measure sub-networks on this device) and `llamanas targets` (list profiles)."""

from __future__ import annotations

from pathlib import Path

import click

from ..cluster import RayNode
from ..concepts import WEIGHT_SOURCES
from ..errors import BadInputError
from ..profiler import runner
from ..profiler.base import Shapes
from ..profiler.runner import DEFAULT_PROFILES_DIR, ProfileSettings
from ..profiler.stats import Protocol
from .common import emit, progress_printer, table
from .options import (
    CLOCK, DEVICE, JSON, MODEL, OUT, PROFILE_PRECISION, QUIET, RAY, SAMPLES, SEED, SPACE, THREADS, default_of,
    protocol_options, settings_from, shape_options,
)  # fmt: skip
from .registry_options import BACKEND


@click.command()
@MODEL()
@SPACE()
@BACKEND(ProfileSettings)
@PROFILE_PRECISION(ProfileSettings, flag="--precision")
@DEVICE(ProfileSettings)
@SAMPLES(ProfileSettings, note="in the plan.")
@click.option("--target", "target", required=True, multiple=True,
              help="Name of the hardware target (the profile's directory name); repeat with --ray to profile a fleet.")
@OUT(note="the profile directory [hardware_profiles/TARGET]; with several --target, the folder of their profiles.")
@RAY(note="Measures on the node advertising --node-resource, not here.")
@click.option("--node-resource", "node_resource", multiple=True, metavar="NAME",
              help="Custom Ray resource of the target's node, one per --target in order [the target's name].")
@shape_options(Shapes)
@THREADS(ProfileSettings, type=click.IntRange(min=1))  # checked on the machine that measures (--ray: a node)
@SEED(ProfileSettings, note="of the sampling plan and of random weights.")
@click.option("--weights", type=click.Choice(WEIGHT_SOURCES), default=default_of(ProfileSettings, "weights"),
              show_default=True,
              help="auto: the checkpoint's weights when --model has them, else random from config.json.")  # fmt: skip
@CLOCK(ProfileSettings)
@protocol_options(default_of(ProfileSettings, "protocol"))
@click.option("--anchor-every", default=default_of(ProfileSettings, "anchor_every"), show_default=True,
              type=click.IntRange(min=0),
              help="Measure the space's anchor sub-network after every N visits (and first and last), so a fit "
                   "can cancel the machine's drift in speed; 0: never.")  # fmt: skip
@click.option("--pin-cpus", "pin_cpus", metavar="CPUS", callback=lambda ctx, param, value: _cpu_list(value),
              help="Fix the measuring process to these CPUs (e.g. 1 or 0,1), where the OS allows it.")
@QUIET()
@JSON()
def profile(**opts) -> None:
    """Measure sampled sub-networks on this device and append them to hardware_profiles/TARGET/.

    Rerunning the same command resumes; a larger --samples or --visits extends the same plan.
    With --ray the measurements run on the cluster node advertising the target's resource
    (`ray start --address ... --resources '{"TARGET": 1}'`) and stream back here; several
    --target profile a fleet at once, each into its own directory.
    """
    shapes, protocol = settings_from(Shapes, opts), settings_from(Protocol, opts)
    settings = settings_from(ProfileSettings, opts, shapes=shapes, protocol=protocol)
    nodes = _nodes(opts["target"], opts["address"], opts["node_resource"])
    printer = progress_printer(opts["quiet"])
    try:
        if len(nodes) == 1:
            (target, node), = nodes.items()
            result = runner.profile(opts["model"], opts["space_name"], settings, target=target, out=opts["out"],
                                    callback=printer, node=node)  # fmt: skip
            emit(result.to_dict(), opts["as_json"], _render_profile)
            return
        results = runner.profile_fleet(opts["model"], opts["space_name"], settings, targets=nodes,
                                       out=opts["out"] or DEFAULT_PROFILES_DIR, callback=printer)  # fmt: skip
    finally:
        printer.close()
    emit({"targets": [r.to_dict() for r in results]}, opts["as_json"],
         lambda fleet: "\n".join(_render_profile(r) for r in fleet["targets"]))  # fmt: skip


def _cpu_list(value: str | None) -> tuple[int, ...]:
    if value is None:
        return ()
    try:
        cpus = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected CPU numbers separated by commas (0,1), got {value!r}") from None
    if any(cpu < 0 for cpu in cpus):
        raise click.BadParameter(f"CPU numbers are 0 or more, got {value!r}")
    return cpus


def _nodes(targets: tuple[str, ...], address: str | None, resources: tuple[str, ...]) -> dict:
    """{target: where it is measured}: None (here) without --ray, else the Ray node advertising its resource."""
    if len(set(targets)) != len(targets):
        raise BadInputError(f"a target named twice: {list(targets)}", param="target")
    if address is None:
        if resources:
            raise BadInputError("applies to a profile on Ray only; add --ray ADDRESS", param="node_resource")
        if len(targets) > 1:
            raise BadInputError("several targets are profiled on a Ray cluster only; add --ray ADDRESS", param="target")
        return {targets[0]: None}
    if resources and len(resources) != len(targets):
        raise BadInputError(f"{len(resources)} resources for {len(targets)} targets; give one per --target",
                            param="node_resource")  # fmt: skip
    return {t: RayNode(r, address) for t, r in zip(targets, resources or targets)}


def _render_profile(r: dict) -> str:
    cv = ", ".join(f"{k} {v:.3f}" for k, v in r["median_cv"].items() if v is not None)
    return (
        f"profile {r['target']} ({r['backend']} {r['precision']} {r['device']}, "
        f"{r['threads']} threads, {r['clock']} clock) -> {r['out']}\n"
        f"  visits measured now {r['measured_now']}, already present {r['already_present']}, "
        f"records of this setup {r['records']} of {r['subnets']} sub-networks ({r['flagged']} flagged, "
        f"{r['loaded']} measured under load)\n"
        f"  anchor measurements {r['anchors']}{_drift(r['anchor_drift_pct'])}\n"
        f"  median CV: {cv or 'n/a'}\n  wall time {r['wall_s']:.1f} s"
    )


def _drift(pct: float | None) -> str:
    return "" if pct is None else f"; the machine's speed moved {pct:.1f} % over them (cancelled in a fit)"


@click.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              help="Folder holding one directory per target [hardware_profiles if present, else the shipped ones].")
@JSON()
def targets(directory: Path | None, as_json: bool) -> None:
    """List the hardware profiles present: target, device, backends and record counts."""
    directory = directory or runner.profiles_dir()
    emit({"dir": str(directory), "targets": runner.list_targets(directory)}, as_json, _render_targets)


def _render_targets(r: dict) -> str:
    if not r["targets"]:
        return f"no profiles in {r['dir']}"
    rows = [
        (t["target"], t["device"], ", ".join(f"{k}: {n}" for k, n in t["setups"].items()), t["records"], t["flagged"])
        for t in r["targets"]
    ]
    return table(rows, ["target", "device", "backend/precision/device: records", "records", "flagged"])
