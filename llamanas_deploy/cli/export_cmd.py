"""`llamanas export`, `generate` and `bench`: the deployable artifact, run and measured.

`generate` imports only onnxruntime, numpy and tokenizers (no torch): what a deployment needs; on a
GGUF artifact, llama-cpp-python instead (`gguf_runtime`). Both commands run either kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import BadInputError
from ..exporter.gguf import GGUFSettings, export_gguf
from ..exporter.measure import BenchSettings
from ..exporter.measure import bench as bench_artifact
from ..exporter.pipeline import EVAL_SEQ_LEN, ExportSettings
from ..exporter.pipeline import export as export_artifact
from ..exporter.verify import DEFAULT_MAX_PPL_INCREASE_PCT
from ..onnx_model.graphs import DEFAULT_PRECISIONS
from ..onnx_model.quantize import DEFAULTS as QUANT_DEFAULTS
from ..profiler.base import SHAPE_FIELDS
from ..profiler.stats import Protocol
from ..runtime import DEFAULT_MAX_NEW_TOKENS, Artifact, Sampling, generate_text
from ..space import load_space
from .common import emit, log, progress_printer, table
from .options import (
    ARTIFACT, CLOCK, DATA, DEVICE, EXPORT_FORMAT, EXPORT_PRECISION, JSON, MODEL, NEW_DIRECTORY, OUT, PREDICTOR, QUIET, SEED, SPACE,
    SUBNET, THREADS, FiniteFloat, default_of, protocol_options, settings_from, shape_options, stack,
)  # fmt: skip
from .subnet_cmd import resolve_subnet

DEFAULTS_BY_DEVICE = ", ".join(f"{device}: {precision}" for device, precision in DEFAULT_PRECISIONS.items())


def _quant_defaults(index: int) -> str:
    return ", ".join(f"{precision} {device}: {values[index]}" for (precision, device), values in QUANT_DEFAULTS.items())


# how to measure (defaults: the predictor's shapes, threads and clock, else the profiler's)
_bench_options = stack(
    THREADS(note="[the predictor's, else 1]"),
    shape_options(note="[the predictor's, else the profiler's]"),
    protocol_options(default_of(BenchSettings, "protocol"), noise=False),
    CLOCK(note="[the predictor's, else wall]"),
)


def _bench_settings(opts: dict[str, Any]) -> BenchSettings:
    shapes = {k: opts[k] for k in SHAPE_FIELDS if opts[k] is not None}
    return settings_from(BenchSettings, opts, shapes=shapes or None, protocol=settings_from(Protocol, opts))


# ---- export -----------------------------------------------------------------------------------
@click.command()
@MODEL()
@SPACE()
@SUBNET(required=True)
@EXPORT_FORMAT()
@EXPORT_PRECISION(ExportSettings, flag="--precision", note=f"[{DEFAULTS_BY_DEVICE}; gguf: f16]")
@DEVICE(ExportSettings)
@OUT(required=True, note=NEW_DIRECTORY)
@PREDICTOR(type=click.Path(dir_okay=False, path_type=Path), note="Its prediction is recorded.")
@DATA(ExportSettings, note="Held out, for the accuracy checks [the model's heldout.txt].")
@click.option("--max-eval-tokens", default=default_of(ExportSettings, "max_eval_tokens"), show_default=True,
              type=click.IntRange(min=EVAL_SEQ_LEN))
@click.option("--block-size", type=int, help=f"int8 / int4: MatMulNBits block size [{_quant_defaults(0)}].")
@click.option("--accuracy-level", type=int,
              help="int8 / int4: 4 = int8 compute (fast on CPU), 0 = unset (float compute: slow on CPU; "
                   f"CUDA computes in fp16) [{_quant_defaults(1)}].")
@click.option("--max-ppl-increase", "max_ppl_increase_pct", type=FiniteFloat(min=0),
              help="Fail a quantized export whose held-out perplexity rises by more (%) "
                   f"[{', '.join(f'{p}: {v:g}' for p, v in DEFAULT_MAX_PPL_INCREASE_PCT.items())}].")
@click.option("--bench/--no-bench", default=True, show_default=True,
              help="Measure the artifact on this device (a GGUF one with llama.cpp).")
@_bench_options
@QUIET()
@JSON()
def export(**opts: Any) -> None:
    """Extract a sub-network, export it to ONNX with a KV cache (or to GGUF), quantize, verify, measure."""
    space = load_space(opts["space_name"])
    subnet = resolve_subnet(space, opts["subnet_arg"])
    if opts["export_format"] == "gguf":
        emit(_export_gguf(opts, space, subnet).to_dict(), opts["as_json"], _render_gguf_export)
        return
    result = export_artifact(
        opts["model"], space, subnet, settings_from(ExportSettings, opts), out=opts["out"], predictor=opts["predictor"],
        bench=_bench_settings(opts) if opts["bench"] else None, callback=progress_printer(opts["quiet"]),
    )  # fmt: skip
    emit(result.to_dict(), opts["as_json"], _render_export)


def _export_gguf(opts: dict[str, Any], space, subnet) -> Artifact:
    onnx_only = {"--block-size": opts["block_size"], "--accuracy-level": opts["accuracy_level"],
                 "--device cuda": opts["device"] == "cuda"}  # fmt: skip
    given = [name for name, value in onnx_only.items() if value]
    if given:  # llama.cpp runs the file on the CPU, quantized by its own types
        raise BadInputError(f"{', '.join(given)}: ONNX exports only, not with --format gguf")
    settings = settings_from(GGUFSettings, opts, precision=opts["precision"] or "f16")
    return export_gguf(opts["model"], space, subnet, settings, out=opts["out"], predictor=opts["predictor"],
                       bench=_bench_settings(opts) if opts["bench"] else None,
                       callback=progress_printer(opts["quiet"]))  # fmt: skip


def _render_gguf_export(m: dict[str, Any]) -> str:
    v = m["verification"]
    logits, quality = v["logits_vs_torch"], v["quality_vs_torch"]
    return "\n".join([
        f"artifact {m['artifact']}: sub-network {m['subnet_id']} ({m['subnet']['num_layers']} layers), "
        f"GGUF {m['precision']} ({m['gguf']['architecture']}), llama.cpp",
        f"size: {m['size']['params']:,} params, GGUF {m['size']['gguf_bytes'] / 2**20:.1f} MiB",
        f"verified: llama.cpp vs torch, logits max diff {logits['relative_max_diff']:.2e} of the largest, "
        f"perplexity {quality['perplexity_change_pct']:+.2f}%, next-token agreement {quality['next_token_agreement']:.0%} "
        f"({v['data']})",
        *_latency_lines(m),
    ])  # fmt: skip


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
    return "\n".join(lines + _latency_lines(m))


def _latency_lines(m: dict[str, Any]) -> list[str]:
    """What an export's manifest says of the artifact's latency: measured here, and predicted."""
    lines = [_render_bench(m["measured"])] if m.get("measured") else []
    if m.get("predicted"):
        p = m["predicted"]
        lines.append(f"predicted {p['metric']}: {p['value']:.4g} ({p['predictor']})")
    return lines


# ---- generate ---------------------------------------------------------------------------------
@click.command()
@ARTIFACT()
@click.option("--prompt", help="Prompt text (continued as it is).")
@click.option("--chat", help="A user's message, put in the artifact's chat template (an instruct model's reply).")
@click.option("--max-new-tokens", default=DEFAULT_MAX_NEW_TOKENS, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=default_of(Sampling, "temperature"), show_default=True, type=FiniteFloat(min=0),
              help="0 = greedy.")
@click.option("--top-k", default=default_of(Sampling, "top_k"), show_default=True, type=click.IntRange(min=0),
              help="Sample among the k best (0: all).")
@SEED(Sampling, note="of the sampling.")
@THREADS(note="[the runtime's choice]")
@JSON()
def generate(artifact: Path, prompt: str | None, chat: str | None, max_new_tokens: int, temperature: float, top_k: int,
             seed: int, threads: int | None, as_json: bool) -> None:  # fmt: skip
    """Generate text from an artifact through ONNX Runtime alone (no torch), or llama.cpp for a GGUF one."""
    if (prompt is None) == (chat is None):
        raise click.UsageError("give --prompt (text to continue) or --chat (a message to answer), one of them")
    r = generate_text(artifact, prompt or chat, max_new_tokens, Sampling(temperature, top_k, seed), threads, chat is not None)
    emit(r.to_dict(), as_json, lambda _: r.text if chat is not None else prompt + r.text)
    if not as_json:
        log(f"{r.new_tokens} new tokens, {r.tok_s:.1f} tokens/s "
            f"(prefill {r.prefill_ms:.1f} ms for {r.prompt_tokens} tokens, decode {r.decode_tok_s:.1f} tokens/s)")  # fmt: skip


# ---- bench ------------------------------------------------------------------------------------
@click.command()
@ARTIFACT()
@_bench_options
@JSON()
def bench(artifact: Path, as_json: bool, **opts: Any) -> None:
    """Prefill, decode and throughput of an artifact on this device; error of its predicted latency."""
    emit(bench_artifact(artifact, _bench_settings(opts)).to_dict(), as_json, _render_bench)


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
