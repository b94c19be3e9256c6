"""`llamanas run`: the whole loop on the embedded default (or any model), one run directory."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click

from .common import emit, json_option, space_option, table


@click.command()
@click.option("--model", default="tiny", show_default=True, help="Super-network dir or built-in name.")
@space_option
@click.option("--backend", default="torch", show_default=True, help="Profiler backend the predictor models.")
@click.option("--backend-precision", default="fp32", show_default=True, help="Precision of the profiled backend.")
@click.option("--precision", "export_precision", type=click.Choice(["fp32", "int8", "int4"]), default="int8",
              show_default=True, help="Precision of the exported ONNX artifact.")  # fmt: skip
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--max-latency", type=click.FloatRange(min=0, min_open=True), help="Predicted decode ms budget.")
@click.option("--speedup", default=1.5, show_default=True, type=click.FloatRange(min=1.0),
              help="Without --max-latency: budget = full network's predicted latency / SPEEDUP.")  # fmt: skip
@click.option("--samples", default=60, show_default=True, type=click.IntRange(min=10),
              help="Sub-networks to profile when no matching profile of this device exists.")  # fmt: skip
@click.option("--visits", default=3, show_default=True, type=click.IntRange(min=1),
              help="Passes over that profile's plan; turns measuring the full network and the winner.")  # fmt: skip
@click.option("--algorithm", type=click.Choice(["nsga2", "linas", "random"]), default="nsga2", show_default=True)
@click.option("--population", default=20, show_default=True, type=click.IntRange(min=2))
@click.option("--evaluations", default=60, show_default=True, type=click.IntRange(min=2))
@click.option("--eval-tokens", default=2048, show_default=True, type=click.IntRange(min=64),
              help="Held-out tokens per perplexity evaluation.")  # fmt: skip
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run directory [runs/DATE-TIME].")
@click.option("--quiet", is_flag=True, help="No progress bars (stage lines still go to stderr).")
@json_option
def run(**opts) -> None:
    """Profile -> fit -> search -> export -> verify and measure, on this device, in one run directory.

    Rerunning with the same --out resumes: finished stages are reused.
    """
    from ..loop import RunRequest, run_loop

    out = opts.pop("out") or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    as_json = opts.pop("as_json")
    request = RunRequest(
        out=out,
        model=opts["model"],
        space=opts["space_name"],
        backend=opts["backend"],
        backend_precision=opts["backend_precision"],
        export_precision=opts["export_precision"],
        device=opts["device"],
        max_latency_ms=opts["max_latency"],
        speedup=opts["speedup"],
        samples=opts["samples"],
        visits=opts["visits"],
        algorithm=opts["algorithm"],
        population=opts["population"],
        evaluations=opts["evaluations"],
        eval_tokens=opts["eval_tokens"],
        seed=opts["seed"],
        threads=opts["threads"],
        progress=not opts["quiet"],
    )
    emit(run_loop(request), as_json, render_summary)


def render_summary(s: dict) -> str:
    full, sub = s["rows"]
    art = s["artifact"]
    measured = art["measured"]
    statistic = (art.get("predicted") or {}).get("statistic") or "median"
    headers = ["", "params", "fp16 size", "pred. decode ms", "meas. decode ms", "error", "tok/s", "held-out ppl"]
    rows = [_row(r) for r in (full, sub)]
    rows.append(
        (
            f"  artifact ONNX {art['precision']} ({art['onnx_mib']:.1f} MiB)",
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
        f"{s['predictor']['precision']}, profile {'reused' if s['profile']['reused'] else 'measured'}: "
        f"{s['profile']['dir']})",
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
    from ..profile.store import kept_figure

    return f"{kept_figure(figure, statistic):.4g}" if isinstance(figure, dict) else ""


def _artifact_ppl(art: dict) -> str:
    quantized = (art.get("verification") or {}).get("quantized_vs_fp32") or {}
    value = quantized.get("perplexity")
    return f"{value:.4g}" if isinstance(value, (int, float)) else ""
