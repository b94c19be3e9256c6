"""`llamanas export`, `generate` and `bench`: the deployable artifact, run and measured.

`generate` imports only onnxruntime, numpy and tokenizers (no torch): what a deployment needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .common import emit, json_option, log, space_option, table

PRECISIONS = ["fp32", "int8", "int4"]


def _shape_options(func):
    """Bench shapes and protocol (defaults: the predictor's shapes, else the profiler's)."""
    options = [
        click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads [the predictor's, else 1]."),
        click.option("--batch-size", type=click.IntRange(min=1), help="Batch [the predictor's, else 1]."),
        click.option("--prompt-len", type=click.IntRange(min=1), help="Prefill tokens [the predictor's, else 128]."),
        click.option("--context-len", type=click.IntRange(min=1), help="KV cache for decode [predictor's, else 128]."),
        click.option("--gen-len", type=click.IntRange(min=1), help="Generated tokens [the predictor's, else 32]."),
        click.option("--repeats", default=10, show_default=True, type=click.IntRange(min=3), help="Timed runs per set."),
        click.option("--warmup", default=2, show_default=True, type=click.IntRange(min=0), help="Untimed runs per figure."),
        click.option("--visits", default=3, show_default=True, type=click.IntRange(min=1), help="Separate measurements, combined."),
        click.option("--clock", type=click.Choice(["wall", "cpu"]),
                     help="wall time, or the thread's CPU time (--threads 1) on a shared machine [predictor's, else wall]."),
    ]  # fmt: skip
    for option in reversed(options):
        func = option(func)
    return func


def _bench_options(opts: dict[str, Any], predicted: dict[str, Any] | None) -> dict[str, Any]:
    from ..profile.base import Shapes
    from ..profile.stats import Protocol

    base = dict((predicted or {}).get("shapes") or Shapes().to_dict())
    names = ("batch_size", "prompt_len", "context_len", "gen_len")
    shapes = Shapes(**{k: opts[k] if opts[k] is not None else base[k] for k in names})
    protocol = Protocol(warmup=opts["warmup"], repeats=opts["repeats"], visits=opts["visits"])
    return {"shapes": shapes, "protocol": protocol, "threads": opts["threads"], "clock": opts["clock"]}


# ---- export -----------------------------------------------------------------------------------
@click.command()
@click.option("--model", default="tiny", show_default=True, help="Super-network checkpoint dir or built-in name.")
@space_option
@click.option("--subnet", required=True, help="Sub-network: inline JSON, a config file, or FRONT.json#INDEX.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True)
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="New artifact directory (must not exist or be empty).")
@click.option("--predictor", type=click.Path(dir_okay=False, path_type=Path), help="Latency predictor JSON: record its prediction.")
@click.option("--data", help="Held-out text for the accuracy checks [the model's heldout.txt].")
@click.option("--max-eval-tokens", default=4096, show_default=True, type=click.IntRange(min=128))
@click.option("--block-size", type=int, help="int4: MatMulNBits block size [32].")
@click.option("--accuracy-level", type=int, help="int4: 4 = int8 compute (fast on CPU), 0 = fp32 compute [cpu: 4].")
@click.option("--max-ppl-increase", type=float, help="Fail a quantized export whose perplexity rises by more (%).")
@click.option("--bench/--no-bench", default=True, show_default=True, help="Measure the artifact on this device.")
@_shape_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
@json_option
def export(**opts: Any) -> None:
    """Extract a sub-network, export it to ONNX with a KV cache, quantize, verify, measure."""
    from ..export.pipeline import ExportRequest, export_artifact
    from ..subnet_config import read_subnet_arg

    predicted = _predictor_shapes(opts["predictor"])
    request = ExportRequest(
        model=opts["model"],
        space=opts["space_name"],
        subnet=read_subnet_arg(opts["subnet"]),
        precision=opts["precision"],
        device=opts["device"],
        out=opts["out"],
        predictor=opts["predictor"],
        data=opts["data"],
        max_eval_tokens=opts["max_eval_tokens"],
        block_size=opts["block_size"],
        accuracy_level=opts["accuracy_level"],
        max_ppl_increase_pct=opts["max_ppl_increase"],
        bench=opts["bench"],
        bench_options=_bench_options(opts, predicted),
        progress=not opts["quiet"],
    )
    manifest = export_artifact(request)
    emit({"artifact": str(opts["out"]), **manifest}, opts["as_json"], _render_export)


def _predictor_shapes(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    from ..predict.estimator import LatencyPredictor

    return {"shapes": LatencyPredictor.load(path).metadata_.get("shapes")}


def _render_export(m: dict[str, Any]) -> str:
    v = m["verification"]
    fp32 = v["fp32_vs_torch"]
    lines = [
        f"artifact {m['artifact']}: sub-network {m['subnet_id']} ({m['subnet']['num_layers']} layers), "
        f"{m['precision']}, {m['execution_provider']}",
        f"size: {m['size']['params']:,} params, fp16 {m['size']['fp16_bytes'] / 2**20:.1f} MiB, "
        f"ONNX {m['size']['onnx_bytes'] / 2**20:.1f} MiB",
        f"verified: ORT fp32 vs torch max abs diff prefill {fp32['prefill']['logits_max_abs_diff']:.2e}, "
        f"decode {fp32['decode']['logits_max_abs_diff']:.2e} (<= {fp32['tolerance']:g})",
    ]
    if "quantized_vs_fp32" in v:
        q = v["quantized_vs_fp32"]
        lines.append(
            f"{m['precision']}: perplexity {q['perplexity']:.4g} vs fp32 {q['perplexity_fp32']:.4g} "
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
@click.option("--artifact", required=True, type=click.Path(path_type=Path), help="Artifact directory from `llamanas export`.")
@click.option("--prompt", required=True, help="Prompt text.")
@click.option("--max-new-tokens", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(min=0), help="0 = greedy.")
@click.option("--top-k", default=0, show_default=True, type=click.IntRange(min=0), help="Sample among the k best (0: all).")
@click.option("--seed", default=0, show_default=True, help="Sampling seed.")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads [ORT's default].")
@json_option
def generate(artifact: Path, prompt: str, max_new_tokens: int, temperature: float, top_k: int, seed: int,
             threads: int | None, as_json: bool) -> None:  # fmt: skip
    """Generate text from an artifact through ONNX Runtime alone (no torch)."""
    from ..runtime import Sampling, generate as run_generate, open_artifact

    opened = open_artifact(artifact)
    tokenizer = opened.tokenizer()
    prompt_ids = tokenizer.encode(prompt).ids
    out = run_generate(opened.decoder(threads=threads), prompt_ids, max_new_tokens, Sampling(temperature, top_k, seed), opened.eos_id)
    result = {
        "text": tokenizer.decode(out.tokens),
        "prompt_tokens": out.prompt_tokens,
        "tokens": out.tokens,
        "new_tokens": len(out.tokens),
        "prefill_ms": out.prefill_s * 1e3,
        "decode_tok_s": out.decode_tok_s,
        "tok_s": out.total_tok_s,
        "stopped_at_eos": out.stopped_at_eos,
    }
    emit(result, as_json, lambda r: prompt + r["text"])
    if not as_json:
        log(f"{len(out.tokens)} new tokens, {out.total_tok_s:.1f} tokens/s "
            f"(prefill {out.prefill_s * 1e3:.1f} ms for {out.prompt_tokens} tokens, decode {out.decode_tok_s:.1f} tokens/s)")  # fmt: skip


# ---- bench ------------------------------------------------------------------------------------
@click.command()
@click.option("--artifact", required=True, type=click.Path(path_type=Path), help="Artifact directory from `llamanas export`.")
@_shape_options
@json_option
def bench(artifact: Path, as_json: bool, **opts: Any) -> None:
    """Prefill, decode and throughput of an artifact on this device; error of its predicted latency."""
    from ..export.bench import bench_decoder
    from ..runtime import open_artifact

    opened = open_artifact(artifact)
    result = bench_decoder(opened.directory, opened.manifest, **_bench_options(opts, opened.manifest.get("predicted")))
    emit({"artifact": str(artifact), "subnet_id": opened.manifest["subnet_id"], **result}, as_json, _render_bench)


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
    vs = r.get("vs_predicted")
    if vs:
        note = "" if vs["same_setup"] else " (predictor was fitted for another backend/precision/threads/device)"
        text += f"\npredicted {vs['metric']} {vs['predicted']:.4g}, measured {vs['measured']:.4g}: error {vs['error_pct']:+.1f}%{note}"
    return text
