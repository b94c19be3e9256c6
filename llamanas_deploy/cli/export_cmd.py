"""`llamanas export`, `generate` and `bench`: the deployable artifact, run and measured.

`generate` imports only onnxruntime, numpy and tokenizers (no torch): what a deployment needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..concepts import EXPORT_PRECISIONS
from ..exporter.measure import BenchSettings
from ..profiler.base import SHAPE_FIELDS
from ..exporter.pipeline import EVAL_SEQ_LEN, ExportSettings
from ..exporter.verify import DEFAULT_MAX_PPL_INCREASE_PCT
from ..onnx_model.graphs import DEFAULT_PRECISIONS
from ..onnx_model.quantize import DEFAULTS as QUANT_DEFAULTS
from ..runtime import DEFAULT_MAX_NEW_TOKENS, Sampling
from .common import (
    FiniteFloat, clock_option, device_option, emit, json_option, log, model_option, progress_printer, protocol_from,
    protocol_options, quiet_option, shape_options, space_option, table, threads_option,
)  # fmt: skip
from .subnet_cmd import SUBNET_HELP, resolve_subnet

ARTIFACT_HELP = "Artifact directory from `llamanas export`."
DEFAULTS_BY_DEVICE = ", ".join(f"{device}: {precision}" for device, precision in DEFAULT_PRECISIONS.items())


def _quant_defaults(index: int) -> str:
    return ", ".join(f"{precision} {device}: {values[index]}" for (precision, device), values in QUANT_DEFAULTS.items())


def _bench_options(func):
    """How to measure (defaults: the predictor's shapes, threads and clock, else the profiler's)."""
    options = [
        threads_option(None, "Intra-op threads [the predictor's, else 1]."),
        shape_options(None),
        protocol_options(BenchSettings().protocol, noise=False),
        clock_option(None),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _bench_settings(opts: dict[str, Any]) -> BenchSettings:
    shapes = {k: opts[k] for k in SHAPE_FIELDS if opts[k] is not None}
    return BenchSettings(shapes=shapes or None, protocol=protocol_from(opts), threads=opts["threads"], clock=opts["clock"])


# ---- export -----------------------------------------------------------------------------------
@click.command()
@model_option()
@space_option
@click.option("--subnet", required=True, help=SUBNET_HELP)
@click.option("--precision", type=click.Choice(EXPORT_PRECISIONS),
              help=f"cpu: fp32, int8, int4; cuda: fp16, int4 (MatMulNBits over fp16) [{DEFAULTS_BY_DEVICE}].")
@device_option(ExportSettings().device)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="New artifact directory (must not exist or be empty).")
@click.option("--predictor", type=click.Path(dir_okay=False, path_type=Path), help="Latency predictor JSON: record its prediction.")
@click.option("--data", help="Held-out text for the accuracy checks [the model's heldout.txt].")
@click.option("--max-eval-tokens", default=ExportSettings().max_eval_tokens, show_default=True,
              type=click.IntRange(min=EVAL_SEQ_LEN))
@click.option("--block-size", type=int, help=f"int8 / int4: MatMulNBits block size [{_quant_defaults(0)}].")
@click.option("--accuracy-level", type=int,
              help="int8 / int4: 4 = int8 compute (fast on CPU), 0 = unset (float compute: slow on CPU; "
                   f"CUDA computes in fp16) [{_quant_defaults(1)}].")
@click.option("--max-ppl-increase", "max_ppl_increase_pct", type=FiniteFloat(min=0),
              help="Fail a quantized export whose held-out perplexity rises by more (%) "
                   f"[{', '.join(f'{p}: {v:g}' for p, v in DEFAULT_MAX_PPL_INCREASE_PCT.items())}].")
@click.option("--bench/--no-bench", default=True, show_default=True, help="Measure the artifact on this device.")
@_bench_options
@quiet_option
@json_option
def export(**opts: Any) -> None:
    """Extract a sub-network, export it to ONNX with a KV cache, quantize, verify, measure."""
    from dataclasses import fields

    from ..exporter import export as export_artifact
    from ..space import load_space

    space = load_space(opts["space_name"])
    settings = ExportSettings(**{f.name: opts[f.name] for f in fields(ExportSettings)})
    result = export_artifact(
        opts["model"], space, resolve_subnet(space, opts["subnet"]), opts["out"], settings, predictor=opts["predictor"],
        bench=_bench_settings(opts) if opts["bench"] else None, callback=progress_printer(opts["quiet"]),
    )  # fmt: skip
    emit(result.to_dict(), opts["as_json"], _render_export)


def _render_export(m: dict[str, Any]) -> str:
    v = m["verification"]
    base = "fp16" if "fp16_vs_torch" in v else "fp32"  # the unquantized graph (fp16 on CUDA)
    fp32 = v[f"{base}_vs_torch"]
    lines = [
        f"artifact {m['artifact']}: sub-network {m['subnet_id']} ({m['subnet']['num_layers']} layers), "
        f"{m['precision']}, {m['execution_provider']}",
        f"size: {m['size']['params']:,} params, fp16 {m['size']['fp16_bytes'] / 2**20:.1f} MiB, "
        f"ONNX {m['size']['onnx_bytes'] / 2**20:.1f} MiB",
        f"verified: ORT {base} vs torch max abs diff prefill {fp32['prefill']['logits_max_abs_diff']:.2e}, "
        f"decode {fp32['decode']['logits_max_abs_diff']:.2e} (<= {fp32['tolerance']:g})",
    ]
    if f"quantized_vs_{base}" in v:
        q = v[f"quantized_vs_{base}"]
        lines.append(
            f"{m['precision']}: perplexity {q['perplexity']:.4g} vs {base} {q[f'perplexity_{base}']:.4g} "
            f"({q['perplexity_change_pct']:+.2f}%), greedy agreement {q['greedy_agreement']:.0%} ({v['data']})"
        )
    if m.get("measured"):
        lines.append(_render_bench(m["measured"]))
    if m.get("predicted"):
        p = m["predicted"]
        lines.append(f"predicted {p['metric']}: {p['value']:.4g} ({p['predictor']})")
    return "\n".join(lines)


# ---- generate ---------------------------------------------------------------------------------
@click.command()
@click.option("--artifact", required=True, type=click.Path(path_type=Path), help=ARTIFACT_HELP)
@click.option("--prompt", help="Prompt text (continued as it is).")
@click.option("--chat", help="A user's message, put in the artifact's chat template (an instruct model's reply).")
@click.option("--max-new-tokens", default=DEFAULT_MAX_NEW_TOKENS, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=Sampling().temperature, show_default=True, type=FiniteFloat(min=0),
              help="0 = greedy.")
@click.option("--top-k", default=Sampling().top_k, show_default=True, type=click.IntRange(min=0),
              help="Sample among the k best (0: all).")
@click.option("--seed", default=Sampling().seed, show_default=True, help="Sampling seed.")
@threads_option(None, "Intra-op threads [ORT's default].")
@json_option
def generate(artifact: Path, prompt: str | None, chat: str | None, max_new_tokens: int, temperature: float, top_k: int,
             seed: int, threads: int | None, as_json: bool) -> None:  # fmt: skip
    """Generate text from an artifact through ONNX Runtime alone (no torch)."""
    from ..runtime import generate_text

    if (prompt is None) == (chat is None):
        raise click.UsageError("give --prompt (text to continue) or --chat (a message to answer), one of them")
    r = generate_text(artifact, prompt or chat, max_new_tokens, Sampling(temperature, top_k, seed), threads, chat is not None)
    emit(r.to_dict(), as_json, lambda _: r.text if chat is not None else prompt + r.text)
    if not as_json:
        log(f"{r.new_tokens} new tokens, {r.tok_s:.1f} tokens/s "
            f"(prefill {r.prefill_ms:.1f} ms for {r.prompt_tokens} tokens, decode {r.decode_tok_s:.1f} tokens/s)")  # fmt: skip


# ---- bench ------------------------------------------------------------------------------------
@click.command()
@click.option("--artifact", required=True, type=click.Path(path_type=Path), help=ARTIFACT_HELP)
@_bench_options
@json_option
def bench(artifact: Path, as_json: bool, **opts: Any) -> None:
    """Prefill, decode and throughput of an artifact on this device; error of its predicted latency."""
    from ..exporter import bench as bench_artifact

    emit(bench_artifact(artifact, _bench_settings(opts)), as_json, _render_bench)


def _load_line(load: dict[str, Any] | None) -> str:
    """What the rest of the machine did while the figures were measured, when it took CPU time from them."""
    if not load or not load.get("loaded"):
        return ""
    return (f"\nmeasured under load (other processes kept {load['others_cores']:.1f} cores busy, steal "
            f"{load['steal_pct']:.1f} %): the figures are likely slower than this machine's when quiet")  # fmt: skip


def _render_bench(r: dict[str, Any]) -> str:
    rows = [
        [name, r[key]["best"], r[key]["median"], r[key]["iqr"], f"{r[key]['cv']:.1%}", r[key]["n"], "yes" if r[key]["flagged"] else ""]
        for name, key in (("prefill ms", "prefill_ms"), ("decode ms/token", "decode_ms"), ("tokens/s", "throughput_tok_s"))
    ]
    s = r["shapes"]
    head = (
        f"{r['backend']} {r['precision']} on {r['device']}, {r['threads']} thread(s), batch {s['batch_size']}, "
        f"prompt {s['prompt_len']}, context {s['context_len']}, gen {s['gen_len']}; peak +{r['peak_mem_mib']:.0f} MiB"
    )
    text = head + "\n" + table(rows, ["figure", "best", "median", "IQR", "CV", "n", "flagged"])
    text += _load_line(r.get("load"))
    vs = r.get("vs_predicted")
    if vs:
        note = "" if vs["same_setup"] else " (predictor was fitted for another backend/precision/threads/device)"
        text += f"\npredicted {vs['metric']} {vs['predicted']:.4g}, measured {vs['measured']:.4g}: error {vs['error_pct']:+.1f}%{note}"
    return text
