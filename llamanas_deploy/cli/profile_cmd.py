"""`llamanas profile` (measure sub-networks on this device) and `llamanas targets` (list profiles)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click

from ..errors import BadInputError
from .common import emit, json_option, space_option, table


@click.command()
@click.option("--model", default="tiny", show_default=True, help="Checkpoint dir, config.json, or built-in name.")
@space_option
@click.option("--backend", default="torch", show_default=True, help="torch, torch-compile, ipex, onnxruntime.")
@click.option("--precision", default="fp32", show_default=True, help="fp32 / bf16 (torch); int8 / int4 (ORT).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--samples", default=100, show_default=True, type=click.IntRange(min=1), help="Sub-networks in the plan.")
@click.option("--target", required=True, help="Name of the hardware target (the profile's directory name).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Profile dir [hardware_profiles/TARGET].")
@click.option("--batch-size", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--prompt-len", default=128, show_default=True, type=click.IntRange(min=1), help="Prefill tokens.")
@click.option("--context-len", default=128, show_default=True, type=click.IntRange(min=1), help="KV cache for decode.")
@click.option("--gen-len", default=32, show_default=True, type=click.IntRange(min=1), help="Tokens generated (throughput).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1), help="Fixed intra-op thread count.")
@click.option("--seed", default=0, show_default=True, help="Seed of the sampling plan and of random weights.")
@click.option("--weights", type=click.Choice(["auto", "random", "checkpoint"]), default="auto", show_default=True,
              help="auto: the checkpoint's weights when --model has them, else random from config.json.")  # fmt: skip
@click.option("--clock", type=click.Choice(["wall", "cpu"]), default="wall", show_default=True,
              help="wall: elapsed time. cpu: the thread's CPU time (--threads 1; on a shared machine).")  # fmt: skip
@click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0), help="Untimed runs per figure.")
@click.option("--repeats", default=10, show_default=True, type=click.IntRange(min=3), help="Timed runs per set.")
@click.option("--max-cv", default=0.10, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="A set noisier than this (robust CV) is re-measured, then flagged.")  # fmt: skip
@click.option("--attempts", default=3, show_default=True, type=click.IntRange(min=1), help="Sets at most per figure.")
@click.option("--visits", default=3, show_default=True, type=click.IntRange(min=1),
              help="Passes over the plan; each sub-network is measured once per pass, passes apart.")  # fmt: skip
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
def profile(**opts) -> None:
    """Measure sampled sub-networks on this device and append them to hardware_profiles/TARGET/.

    Rerunning the same command resumes; a larger --samples or --visits extends the same plan.
    """
    from ..profile.base import Shapes
    from ..profile.runner import ProfileRequest, run_profile
    from ..profile.stats import Protocol

    shapes = Shapes(opts["batch_size"], opts["prompt_len"], opts["context_len"], opts["gen_len"])
    protocol = Protocol(opts["warmup"], opts["repeats"], opts["max_cv"], opts["attempts"], opts["visits"])
    request = ProfileRequest(
        target=_target_name(opts["target"]),
        model=opts["model"],
        space=opts["space_name"],
        backend=opts["backend"],
        precision=opts["precision"],
        device=opts["device"],
        samples=opts["samples"],
        seed=opts["seed"],
        threads=opts["threads"],
        weights=opts["weights"],
        clock=opts["clock"],
        shapes=shapes,
        protocol=protocol,
        out=opts["out"],
    )
    emit(run_profile(request, progress=not opts["quiet"]), opts["as_json"], _render_profile)


def _target_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise BadInputError(f"--target '{name}': use letters, digits, '-', '_' and '.' only")
    return name


def _render_profile(r: dict) -> str:
    cv = ", ".join(f"{k} {v:.3f}" for k, v in r["median_cv"].items() if v is not None)
    return (
        f"profile {r['target']} ({r['backend']} {r['precision']} {r['device']}, "
        f"{r['threads']} threads, {r['clock']} clock) -> {r['out']}\n"
        f"  visits measured now {r['measured_now']}, already present {r['already_present']}, "
        f"records of this setup {r['records']} of {r['subnets']} sub-networks ({r['flagged']} flagged)\n"
        f"  median CV: {cv or 'n/a'}\n  wall time {r['wall_s']:.1f} s"
    )


@click.command()
@click.option("--dir", "profiles_dir", default="hardware_profiles", show_default=True,
              type=click.Path(file_okay=False, path_type=Path), help="Folder holding one directory per target.")  # fmt: skip
@json_option
def targets(profiles_dir: Path, as_json: bool) -> None:
    """List the hardware profiles present: target, device, backends and record counts."""
    from ..profile.fingerprint import describe
    from ..profile.store import FINGERPRINT_FILE, read_profile

    if not profiles_dir.is_dir():
        raise BadInputError(f"--dir {profiles_dir}: no such directory")
    rows = []
    for path in sorted(p for p in profiles_dir.iterdir() if (p / FINGERPRINT_FILE).is_file()):
        prof = read_profile(path)
        setups = Counter(f"{r.backend}/{r.precision}/{r.raw['device']}" for r in prof.records)
        rows.append(
            {
                "target": prof.target,
                "path": str(path),
                "fingerprint_id": prof.fingerprint["fingerprint_id"],
                "device": describe(prof.fingerprint["device"]),
                "records": len(prof.records),
                "flagged": sum(r.flagged for r in prof.records),
                "setups": dict(setups),
                "spaces": sorted({r.space_id for r in prof.records}),
            }
        )
    emit({"dir": str(profiles_dir), "targets": rows}, as_json, _render_targets)


def _render_targets(r: dict) -> str:
    if not r["targets"]:
        return f"no profiles in {r['dir']}"
    rows = [
        (t["target"], t["device"], ", ".join(f"{k}: {n}" for k, n in t["setups"].items()), t["records"], t["flagged"])
        for t in r["targets"]
    ]
    return table(rows, ["target", "device", "backend/precision/device: records", "records", "flagged"])
