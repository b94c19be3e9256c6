"""`llamanas run`: the whole loop on the embedded default (or any model), one run directory."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from ..loop import DEPLOYED, RunSettings
from ..loop import run as run_loop
from ..profiler.store import kept_figure
from .common import emit, progress_printer, table
from .options import (
    CLOCK, DEVICE, EVAL_TOKENS, EVALUATIONS, EXPORT_FORMAT, EXPORT_PRECISION, JSON, MAX_CV, MAX_LATENCY, MODEL, OUT, POPULATION,
    PROFILE_PRECISION, QUIET, SAMPLES, SEED, SPACE, THREADS, VISITS, FiniteFloat, default_of, settings_from,
)  # fmt: skip
from .registry_options import ALGORITHM, BACKEND


@click.command()
@MODEL(RunSettings)
@SPACE(RunSettings, name="space")
@BACKEND(RunSettings, note="The latency predictor models it.")
@PROFILE_PRECISION(RunSettings, name="backend_precision", old=("--backend-precision",))
@EXPORT_FORMAT(RunSettings, flag="--export-format", note="The search's latency is the format's runtime's.")
@EXPORT_PRECISION(RunSettings, name="export_precision", old=("--precision",),
                  note=f"[{', '.join(f'{f}: {p}' for f, (_, p) in DEPLOYED.items())}]")
@DEVICE(RunSettings)
@MAX_LATENCY(note="[full network's predicted latency / SPEEDUP]")
@click.option("--speedup", default=default_of(RunSettings, "speedup"), show_default=True, type=FiniteFloat(min=1),
              help="Without --max-latency: budget = full network's predicted latency / SPEEDUP.")
@SAMPLES(RunSettings, type=click.IntRange(min=10), note="when no matching profile of this device exists.")
@click.option("--transfer-samples", default=default_of(RunSettings, "transfer_samples"), show_default=True,
              type=click.IntRange(min=5),
              help="... when a predictor of another device for the same space and backend exists: this many are "
                   "profiled (2 held out) and that predictor transferred.")
@click.option("--deployed-samples", default=default_of(RunSettings, "deployed_samples"), show_default=True,
              type=click.IntRange(min=0),
              help="Sub-networks profiled in the deployed format (onnxruntime or llamacpp at the export precision) in the run "
                   "directory; its predictor is transferred from the backend's. 0: search on the backend's latency.")
@VISITS(RunSettings, note="Also the turns measuring the full network and the winner.")
@MAX_CV(RunSettings, note="Flagged figures are left out of the fits.")
@ALGORITHM(RunSettings)
@POPULATION(RunSettings)
@EVALUATIONS(RunSettings)
@EVAL_TOKENS(RunSettings, type=click.IntRange(min=64))
@THREADS(RunSettings)
@CLOCK(RunSettings)
@SEED(RunSettings, note="of every stage.")
@OUT(note="the run directory [runs/DATE-TIME].")
@QUIET()
@JSON()
def run(out: Path | None, as_json: bool, quiet: bool, **opts) -> None:
    """Profile -> fit -> search -> export -> verify and measure, on this device, in one run directory.

    Rerunning with the same --out resumes: finished stages are reused.
    """
    out = out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    result = run_loop(settings_from(RunSettings, opts), out=out, callback=progress_printer(quiet))
    emit(result.to_dict(), as_json, render_summary)


def render_summary(s: dict) -> str:
    full, sub = s["rows"]
    art = s["artifact"]
    measured = art["measured"]
    statistic = (art.get("predicted") or {}).get("statistic") or "median"
    headers = ["", "params", "fp16 size", "pred. decode ms", "meas. decode ms", "error", "tok/s", "held-out ppl"]
    rows = [_row(r) for r in (full, sub)]
    rows.append(
        (
            f"  artifact {art['format'].upper()} {art['precision']} ({art['file_mib']:.1f} MiB)",
            "",
            "",
            "",
            _kept(measured.get("decode_ms"), statistic),
            "",
            _kept(measured.get("throughput_tok_s"), statistic),
            _artifact_ppl(art),
        )
    )
    r = s["ratios"]
    lines = [
        f"run directory: {s['run_dir']}",
        f"latency budget: {s['latency_budget_ms']:.3f} ms predicted decode ({s['predictor']['backend']} "
        f"{s['predictor']['precision']})",
        *_provenance_lines(s),
        "",
        table(rows, headers),
        "",
        f"chosen sub-network: {r['smaller_params']:.2f}x smaller, {r['faster_measured']:.2f}x faster measured "
        f"({r['faster_predicted']:.2f}x predicted), {r['throughput']:.2f}x throughput, "
        f"held-out perplexity {r['heldout_perplexity_delta']:+.2f} (first {s['heldout_tokens']:,} held-out tokens)",
        "",
        "files:",
        *(f"  {f}" for f in s["files"]),
    ]
    return "\n".join(lines)


def _provenance_lines(s: dict) -> list[str]:
    """Where each predictor's data came from, and which source each transferred from."""
    profile, deployed = s["profile"], s.get("deployed")
    samples = f", {profile['samples']} sub-networks" if profile.get("samples") else ""
    lines = [f"profile: {'reused' if profile['reused'] else 'measured'} {profile['dir']}{samples}"]
    if profile.get("transfer_from"):
        lines.append(f"  transferred from {profile.get('transfer_from_name') or profile['transfer_from']} "
                     f"(another device's predictor of the same space and backend)")  # fmt: skip
    if deployed:
        how = "reused" if deployed["reused"] else "measured"
        lines.append(f"deployed format ({deployed['backend']} {deployed['precision']}): {how} {deployed['dir']}, "
                     f"{deployed['n_subnets']} sub-networks; predictor transferred from {deployed['transfer_from']}")  # fmt: skip
    transfer = s["predictor"].get("transfer")
    metrics = s["predictor"].get("test_metrics") or {}
    if metrics:
        lines.append(f"search predictor: {s['predictor']['file']}, held-out MAPE {metrics['mape_pct']:.2f}% "
                     f"({metrics['within_10_pct']:.0f}% within ±10%) on {s['predictor'].get('n_test')} sub-networks"
                     + (f"; {transfer['target_samples']} target sub-networks, transfer from {transfer['name']}" if transfer else ""))  # fmt: skip
    if s["predictor"].get("reliable") is False:
        lines.append("  UNRELIABLE: its held-out error is far outside ±10 %, so the latency figures below are the "
                     "machine's noise as much as the model's; rerun on a quieter machine (see `loaded` in the profile "
                     "records), or with more --samples and --visits")  # fmt: skip
    if s.get("speed_factor"):
        lines.append(f"measured beside the profile's anchor: this machine runs {1 / s['speed_factor']:.2f}x the "
                     f"profile's time now; errors compare figures at the profile's speed")  # fmt: skip
    loaded = [r["name"] for r in s["rows"] if r.get("measured_under_load")]
    if loaded:
        lines.append(f"measured under load (other processes or steal took CPU time): {', '.join(loaded)}")
    return lines


def _row(r: dict) -> tuple:
    return (
        r["name"],
        r["params"],
        f"{r['fp16_gib'] * 1024:.1f} MiB" if r["fp16_gib"] < 1 else r["fp16_gib"],
        r["predicted_decode_ms"],
        r["measured_decode_ms"],
        f"{r['prediction_error_pct']:+.1f}%",
        r["throughput_tok_s"],
        r["heldout_perplexity"],
    )


def _kept(figure, statistic: str) -> str:
    return f"{kept_figure(figure, statistic):.4g}" if isinstance(figure, dict) else ""


def _artifact_ppl(art: dict) -> str:
    verification = art.get("verification") or {}
    # ONNX: the quantized graph against its fp32 / fp16 one; GGUF: llama.cpp against torch
    quality = next((v for k, v in verification.items() if k.startswith(("quantized_vs_", "quality_vs_"))), {})
    value = quality.get("perplexity")
    return f"{value:.4g}" if isinstance(value, (int, float)) else ""
