"""llama.cpp's GGUF vs our ONNX artifact, on the same sub-networks, threads and clock, interleaved (#26).

Two sub-networks of the space, `--uniform` (every layer at one MLP width; default the largest) and
`--heterogeneous` (per-layer widths; default the first sub-network with mixed widths that the
space's random sampler draws with seed 0), each exported by the toolkit's own functions at every
`--onnx-precisions` (`exporter.pipeline.export`, no bench) and `--gguf-precisions`
(`exporter.gguf.export_gguf`; any of `concepts.GGUF_PRECISIONS`) from one loaded super-network.
The quality gates are opened wide (this reports the quality, it does not gate it).

- time: what `llamanas bench` measures, the profiler's protocol and workloads through each kind's
  artifact backend (`onnxruntime_backend.ArtifactBackend` or `llamacpp_backend.ArtifactBackend`),
  `--threads` threads and `--clock` for all, default `Shapes()` (prefill: a 128-token prompt;
  decode: one token against 128 cached ones), batch 1. Every artifact is warmed up once, then
  measured once (one visit) in each of `--rounds` rounds, in a new random order each round
  (seed 0); the figure is the median over rounds of each visit's median.
- held-out perplexity: the exports' verification blocks do not compare like with like (ONNX
  against its fp32 graph, GGUF against torch with its first window's second half decoded through
  the KV cache), so every artifact's is computed here by one function, `runtime.perplexity`, on the
  exports' own tokens (`exporter.pipeline.eval_tokens`, `--max-eval-tokens`) in windows of 128
  from an empty cache (llama.cpp through `llamacpp_loop.LlamaCppLoop`), against the torch float32
  sub-network's (`evaluate.perplexity`) on the same windows; the manifests' figures are kept in
  the JSON beside, with how far they are from ours.
- size: the artifact's model files (model.onnx + model.onnx.data; model.gguf), MiB.

Then, per sub-network, llama.cpp against ONNX at the same bits (q8_0 / int8, q4_0 / int4, any other
4-bit GGUF / int4, f16 / fp32): ONNX's figure over llama.cpp's (> 1: llama.cpp is faster or smaller).

    python benchmarks/gguf_vs_onnx.py --rounds 2                     # the tiny default, a few minutes
    python benchmarks/gguf_vs_onnx.py --threads 2 --rounds 9 --json gguf_vs_onnx.json --out /tmp/gguf-vs-onnx
    # SmolLM2-135M (`make smollm2`) on a quiet machine: the full network (30 x 1536) and the sampled
    # 30 layers of mixed widths; `--uniform smallest` for its 22 x 768
    python benchmarks/gguf_vs_onnx.py --model smollm2-135m --space smollm2-135m --threads 1 --rounds 7 \\
        --out /tmp/smollm2-gguf-vs-onnx --json smollm2-gguf-vs-onnx.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from export_vs_builder import log, onnx_mib
from llamacpp_loop import LlamaCppLoop

from llamanas_deploy import concepts
from llamanas_deploy.cli.common import table
from llamanas_deploy.errors import BadInputError
from llamanas_deploy.evaluate import perplexity as torch_perplexity
from llamanas_deploy.exporter.gguf import GGUFSettings, export_gguf
from llamanas_deploy.exporter.measure import artifact_backend
from llamanas_deploy.exporter.pipeline import EVAL_SEQ_LEN, ExportSettings, eval_tokens, export
from llamanas_deploy.jsonfiles import check_out_dir
from llamanas_deploy.model.supernet import SuperNetwork, load_supernet
from llamanas_deploy.profiler.base import Shapes, check_clock
from llamanas_deploy.profiler.fingerprint import describe, device_info
from llamanas_deploy.profiler.stats import Protocol
from llamanas_deploy.profiler.store import kept_figure
from llamanas_deploy.runtime import Artifact, open_artifact, perplexity
from llamanas_deploy.space import SearchSpace, load_space
from llamanas_deploy.subnet_config import SubnetConfig

NO_GATE = 1e9  # % perplexity increase: every export passes, its quality is reported
HETERO_SEED, ORDER_SEED = 0, 0
ONNX, LLAMACPP = "onnxruntime", "llama.cpp"
ONNX_PAIR = {"q8_0": "int8", "q4_0": "int4", "f16": "fp32"}  # llama.cpp's precision -> ONNX's of the same bits
ONNX_PAIR_DEFAULT = "int4"  # any other GGUF precision (a 4-bit K-quant)


@dataclass(frozen=True)
class Entry:
    """One artifact: a sub-network (`role`: uniform / heterogeneous) in one runtime at one precision."""

    role: str
    subnet: SubnetConfig
    runtime: str
    precision: str
    artifact: Artifact

    @property
    def key(self) -> str:
        return f"{self.role} {self.runtime} {self.precision}"


def main() -> None:
    args = parse_args()
    space, subnets = checked_inputs(args)
    settings = [*onnx_settings(args), *gguf_settings(args)]
    supernet = load_supernet(args.model, space)
    with nullcontext(args.out) if args.out else tempfile.TemporaryDirectory(prefix="gguf-vs-onnx-") as out:
        entries = [export_one(supernet, space, role, subnet, s, Path(out)) for role, subnet in subnets.items() for s in settings]
        tokens, source = eval_tokens(supernet.source, None, args.max_eval_tokens, supernet.config["vocab_size"])
        log(f"held-out perplexity: {len(tokens)} tokens of {source}, windows of {EVAL_SEQ_LEN}")
        reference = {role: torch_perplexity(supernet, subnet, tokens, EVAL_SEQ_LEN).value for role, subnet in subnets.items()}
        del supernet
        ppls = {e.key: artifact_perplexity(e, tokens, args.threads) for e in entries}
        rounds = measure(entries, args)
        rows = summarize(entries, reference, ppls, rounds)  # file sizes read before a temporary `out` goes
    pairs = compare(rows)
    context = run_context(args, subnets, len(tokens), source)
    print(render(rows, pairs, context))
    if args.json:
        report = {"context": context, "rows": rows, "pairs": pairs, "rounds": rounds}
        Path(args.json).write_text(json.dumps(report, indent=2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="Super-network checkpoint directory or built-in name.")
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--uniform", default="largest", help="A uniform sub-network, as `llamanas export --subnet` takes it.")
    parser.add_argument("--heterogeneous", help="A per-layer-width sub-network [the first of mixed widths the space samples, seed 0].")
    parser.add_argument("--onnx-precisions", type=precisions, default="int8,int4", help="Comma-separated (fp32, int8, int4).")
    parser.add_argument("--gguf-precisions", type=precisions, default="q8_0,q4_0",
                        help=f"Comma-separated, of {', '.join(concepts.GGUF_PRECISIONS)}.")
    parser.add_argument("--threads", type=int, default=1, help="Threads of both runtimes, for timing and perplexity alike.")
    parser.add_argument("--clock", choices=concepts.CLOCKS, default="wall", help="cpu: the measuring thread's CPU time (--threads 1).")
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved rounds; every artifact measured once per round.")
    parser.add_argument("--max-eval-tokens", type=int, default=4096, help="Held-out tokens for the exports' checks and perplexity.")
    parser.add_argument("--out", help="Write the artifacts in this new (or empty) directory and keep them [a temporary one].")
    parser.add_argument("--json", help="Also write everything to this JSON file.")
    args = parser.parse_args()
    try:
        concepts.check_threads(args.threads, "--threads")
        check_clock(args.clock, "cpu", args.threads)
        onnx_settings(args)  # every precision and limit checked before anything slow
        gguf_settings(args)
    except BadInputError as error:
        parser.error(str(error))
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def checked_inputs(args: argparse.Namespace) -> tuple[SearchSpace, dict[str, SubnetConfig]]:
    """The space and both sub-networks, once `--out` is a directory to create; `SystemExit` naming a bad one."""
    try:
        space = load_space(args.space)
        subnets = {"uniform": resolve(space, args.uniform, "--uniform"), "heterogeneous": heterogeneous(space, args.heterogeneous)}
        if args.out:
            check_out_dir(Path(args.out))
    except BadInputError as error:
        raise SystemExit(f"error: {error}") from None
    return space, subnets


def precisions(value: str) -> list[str]:
    return [p.strip() for p in value.split(",") if p.strip()]


def onnx_settings(args: argparse.Namespace) -> list[ExportSettings]:
    return [ExportSettings(precision=p, max_eval_tokens=args.max_eval_tokens, max_ppl_increase_pct=NO_GATE)
            for p in args.onnx_precisions]  # fmt: skip


def gguf_settings(args: argparse.Namespace) -> list[GGUFSettings]:
    return [GGUFSettings(precision=p, max_eval_tokens=args.max_eval_tokens, threads=args.threads, max_ppl_increase_pct=NO_GATE)
            for p in args.gguf_precisions]  # fmt: skip


def resolve(space: SearchSpace, value: str, option: str) -> SubnetConfig:
    """`value` as `llamanas export --subnet` reads it (`cli.subnet_cmd.resolve_subnet`), errors naming `option`."""
    return space.resolve(value, option if value.lstrip().startswith("{") else None)


def heterogeneous(space: SearchSpace, value: str | None) -> SubnetConfig:
    """`value` resolved, or the first sampled sub-network whose layers differ in width."""
    if value is not None:
        return resolve(space, value, "--heterogeneous")
    mixed = (s for s in space.sample_random(16, HETERO_SEED) if len(set(s.intermediate_sizes)) > 1)
    subnet = next(mixed, None)
    if subnet is None:
        raise SystemExit(f"space {space.name}: no sub-network of mixed widths sampled; give --heterogeneous")
    return subnet


# ---- artifacts ----------------------------------------------------------------------------------
def export_one(supernet: SuperNetwork, space: SearchSpace, role: str, subnet: SubnetConfig,
               settings: ExportSettings | GGUFSettings, out: Path) -> Entry:  # fmt: skip
    """`subnet` exported at `settings` into `out`, opened as `llamanas bench` opens it."""
    runtime = LLAMACPP if isinstance(settings, GGUFSettings) else ONNX
    directory = out / f"{role}-{runtime}-{settings.precision}"
    log(f"export {role} {subnet.id} {runtime} {settings.precision} -> {directory}")
    start = time.perf_counter()
    if runtime == LLAMACPP:
        export_gguf(supernet, space, subnet, settings, out=directory, bench=None)
    else:
        export(supernet, space, subnet, settings, out=directory, bench=None)
    log(f"  done in {time.perf_counter() - start:.0f} s")
    return Entry(role, subnet, runtime, settings.precision, open_artifact(directory))


def model_mib(entry: Entry) -> float:
    artifact = entry.artifact
    return onnx_mib(artifact.gguf_path if artifact.is_gguf else artifact.directory)


def artifact_perplexity(entry: Entry, tokens: list[int], threads: int) -> float:
    """The artifact's held-out perplexity, by `runtime.perplexity` on every runtime."""
    artifact = entry.artifact
    if artifact.is_gguf:
        runner: Any = LlamaCppLoop(artifact.gguf_path, time.perf_counter, threads)
    else:
        runner = artifact.decoder(threads=threads)
    return perplexity(runner, tokens, EVAL_SEQ_LEN).perplexity


def manifest_perplexity(artifact: Artifact) -> float | None:
    """What the export's verification recorded (an ONNX fp32 export records none)."""
    verification = artifact.manifest["verification"]
    block = verification.get("quality_vs_torch") or verification.get("quantized_vs_fp32") or {}
    return block.get("perplexity")


# ---- timing -------------------------------------------------------------------------------------
def measure(entries: list[Entry], args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """{entry key: [its `measure_visits` figures, one per round]}: every artifact once per round, in a
    new random order each round, after one warm-up each."""
    shapes, protocol = Shapes(), Protocol(visits=1)
    backends = {e.key: artifact_backend(e.artifact, args.threads, args.clock, shapes) for e in entries}
    for e in entries:
        log(f"warm-up {e.key}")
        backends[e.key].warm_up(e.subnet, shapes)
    order = np.random.default_rng(ORDER_SEED)
    rounds: dict[str, list[dict[str, Any]]] = {e.key: [] for e in entries}
    for round_ in range(1, args.rounds + 1):
        log(f"round {round_}/{args.rounds}")
        for i in order.permutation(len(entries)):
            e = entries[i]
            rounds[e.key].append(backends[e.key].measure_visits([e.subnet], shapes, protocol)[0].to_dict())
    return rounds


def median_over_rounds(figures: list[dict[str, Any]], field: str) -> float:
    return statistics.median(kept_figure(f[field], "median") for f in figures)


# ---- report -------------------------------------------------------------------------------------
def summarize(entries: list[Entry], reference: dict[str, float], ppls: dict[str, float],
              rounds: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:  # fmt: skip
    """One row per sub-network for torch float32 (the reference), then one per artifact."""
    rows = []
    for role in dict.fromkeys(e.role for e in entries):
        subnet = next(e.subnet for e in entries if e.role == role)
        rows.append(_row(role, subnet, "torch", "fp32", None, None, None, reference[role], reference[role]))
        for e in (e for e in entries if e.role == role):
            row = _row(role, subnet, e.runtime, e.precision, model_mib(e), median_over_rounds(rounds[e.key], "prefill_ms"),
                       median_over_rounds(rounds[e.key], "decode_ms"), ppls[e.key], reference[role])  # fmt: skip
            manifest = manifest_perplexity(e.artifact)
            row["manifest_ppl"] = manifest
            row["manifest_ppl_vs_ours_pct"] = None if manifest is None else (manifest / ppls[e.key] - 1) * 100
            row["flagged_rounds"] = sum(f["flagged"] for f in rounds[e.key])
            rows.append(row)
    return rows


def _row(role: str, subnet: SubnetConfig, runtime: str, precision: str, mib: float | None, prefill: float | None,
         decode: float | None, ppl: float, torch_ppl: float) -> dict[str, Any]:  # fmt: skip
    return {"subnet": role, "subnet_id": subnet.id, "layers": layers(subnet), "runtime": runtime, "precision": precision,
            "mib": mib, "prefill_ms": prefill, "decode_ms": decode, "ppl": ppl,
            "ppl_change_pct": (ppl / torch_ppl - 1) * 100}  # fmt: skip


def layers(subnet: SubnetConfig) -> str:
    widths = subnet.intermediate_sizes
    if len(set(widths)) == 1:
        return f"{subnet.num_layers} x {widths[0]}"
    return f"{subnet.num_layers} layers, {min(widths)}-{max(widths)}"


def compare(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """llama.cpp against ONNX at the same bits, per sub-network: ONNX's figure / llama.cpp's."""
    by_key = {(r["subnet"], r["runtime"], r["precision"]): r for r in rows}
    pairs = []
    for (role, runtime, precision), gguf in by_key.items():
        onnx = by_key.get((role, ONNX, ONNX_PAIR.get(precision, ONNX_PAIR_DEFAULT)))
        if runtime != LLAMACPP or onnx is None:
            continue
        ratios = {f"{f}_onnx_over_llamacpp": onnx[f] / gguf[f] for f in ("decode_ms", "prefill_ms", "mib")}
        faster = LLAMACPP if ratios["decode_ms_onnx_over_llamacpp"] > 1 else ONNX
        pairs.append({"subnet": role, "llamacpp": precision, "onnx": onnx["precision"], **ratios,
                      "ppl_change_pct_llamacpp": gguf["ppl_change_pct"], "ppl_change_pct_onnx": onnx["ppl_change_pct"],
                      "decode_faster": faster})  # fmt: skip
    return pairs


def run_context(args: argparse.Namespace, subnets: dict[str, SubnetConfig], tokens: int, source: str) -> dict[str, Any]:
    device = device_info()
    return {
        "machine": describe(device), "cpu_model": device.get("cpu_model"), "cores": device.get("cpu_physical_cores"),
        "logical_cores": device.get("cpu_logical_cores"), "load_average": os.getloadavg()[0],
        "threads": args.threads, "clock": args.clock, "rounds": args.rounds, "shapes": Shapes().to_dict(),
        "llama_cpp_python": version("llama_cpp_python"), "onnxruntime": version("onnxruntime"),
        "model": args.model, "space": args.space, "eval_tokens": tokens, "eval_source": source, "eval_window": EVAL_SEQ_LEN,
        "subnets": {role: {"id": s.id, **s.to_dict()} for role, s in subnets.items()},
    }  # fmt: skip


def render(rows: list[dict[str, Any]], pairs: list[dict[str, Any]], context: dict[str, Any]) -> str:
    def fmt(value: float | None, spec: str, suffix: str = "") -> str:
        return "—" if value is None else format(value, spec) + suffix

    c = context
    head = ["sub-network", "id", "layers", "runtime", "precision", "file MiB", "prefill ms", "decode ms/token",
            "held-out ppl", "ppl vs torch", "noisy rounds"]  # fmt: skip
    body = [[r["subnet"], r["subnet_id"], r["layers"], r["runtime"], r["precision"], fmt(r["mib"], ".2f"),
             fmt(r["prefill_ms"], ".2f"), fmt(r["decode_ms"], ".3f"), fmt(r["ppl"], ".3f"), fmt(r["ppl_change_pct"], "+.2f", " %"),
             f"{r['flagged_rounds']}/{c['rounds']}" if "flagged_rounds" in r else "—"] for r in rows]  # fmt: skip
    pair_head = ["sub-network", "llama.cpp vs ONNX", "decode ONNX/llama.cpp", "prefill ONNX/llama.cpp",
                 "size ONNX/llama.cpp", "faster decode"]  # fmt: skip
    pair_body = [[p["subnet"], f"{p['llamacpp']} vs {p['onnx']}", fmt(p["decode_ms_onnx_over_llamacpp"], ".2f", "×"),
                  fmt(p["prefill_ms_onnx_over_llamacpp"], ".2f", "×"), fmt(p["mib_onnx_over_llamacpp"], ".2f", "×"),
                  p["decode_faster"]] for p in pairs]  # fmt: skip
    gaps = [abs(r["manifest_ppl_vs_ours_pct"]) for r in rows if r.get("manifest_ppl_vs_ours_pct") is not None]
    notes = [
        f"machine: {c['machine']}; load average {c['load_average']:.1f}",
        f"threads {c['threads']}, {c['clock']} clock, median of {c['rounds']} interleaved rounds (one visit each); "
        f"prompt {c['shapes']['prompt_len']}, decode against {c['shapes']['context_len']} cached tokens, batch 1",
        f"llama-cpp-python {c['llama_cpp_python']}, onnxruntime {c['onnxruntime']}; noisy rounds: a figure (prefill, decode or "
        f"throughput) still noisier than the protocol's max CV (the profiler's `flagged`)",
        f"perplexity: {c['eval_tokens']} held-out tokens, windows of {c['eval_window']}, one function for all; "
        f"the manifests' own figures are within {max(gaps, default=0):.3f} % of these",
        *(f"{role} {s['id']}: {s['num_layers']} layers, widths {list(s['intermediate_sizes'])}" for role, s in c["subnets"].items()),
    ]  # fmt: skip
    return "\n".join([table(body, head), "", table(pair_body, pair_head), "", *notes])


if __name__ == "__main__":
    main()
