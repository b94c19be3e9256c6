"""Full super-network in torch eager vs one sub-network in torch eager, ORT fp32, ORT int8, ORT int4.

One run, side by side, same shapes, threads and measuring protocol (the profiler's): size,
prefill ms, decode ms/token, tokens/s, held-out perplexity, and ratios against the first row.
ORT rows are real `llamanas export` artifacts (verified against torch before being timed).

    python benchmarks/export_compare.py                      # the embedded default (tiny)
    python benchmarks/export_compare.py --clock cpu          # on a machine shared with other jobs
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from llamanas_deploy.cli.common import table
from llamanas_deploy.exporter import BenchSettings, ExportSettings, export
from llamanas_deploy.profiler.base import Shapes
from llamanas_deploy.profiler.stats import Protocol
from llamanas_deploy.space import load_space
from llamanas_deploy.subnet_config import SubnetConfig

DEFAULT_SUBNET = '{"num_layers": 6, "intermediate_sizes": [768, 576, 576, 384, 384, 576]}'


def main() -> None:
    args = parse_args()
    shapes = Shapes(1, args.prompt_len, args.context_len, args.gen_len)
    protocol = Protocol(warmup=2, repeats=args.repeats)
    space = load_space(args.space)
    subnet = space.validate(SubnetConfig.from_json(args.subnet, "--subnet"))
    tokens = heldout_tokens(args.model, args.eval_tokens)
    rows = [
        torch_row("super-network, torch eager fp32", args, space.largest, shapes, protocol, tokens),
        torch_row("sub-network, torch eager fp32", args, subnet, shapes, protocol, tokens),
    ]
    with tempfile.TemporaryDirectory(prefix="export-compare-") as tmp:
        for precision in ("fp32", "int8", "int4"):
            rows.append(ort_row(args, subnet, precision, Path(tmp) / precision, shapes, protocol, tokens))
    print(render(rows, args, subnet, shapes))
    if args.json:
        Path(args.json).write_text(json.dumps({"subnet": subnet.to_dict(), "shapes": shapes.to_dict(), "rows": rows}, indent=2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="Super-network checkpoint (needs its weights).")
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--subnet", default=DEFAULT_SUBNET, help="The chosen sub-network (JSON).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--context-len", type=int, default=128)
    parser.add_argument("--gen-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--eval-tokens", type=int, default=4096, help="Held-out tokens for perplexity.")
    parser.add_argument("--json", help="Also write the rows to this JSON file.")
    return parser.parse_args()


def heldout_tokens(model: str, max_tokens: int) -> list[int]:
    from llamanas_deploy.evaluate import load_heldout

    return load_heldout(model, max_tokens)


def torch_row(name, args, subnet, shapes, protocol, tokens) -> dict:
    from llamanas_deploy.evaluate import perplexity
    from llamanas_deploy.model.supernet import SuperNetwork
    from llamanas_deploy.profiler.backends.torch_backend import TorchBackend

    log(f"{name}: measuring")
    backend = TorchBackend(args.model, "fp32", "cpu", args.threads, weights="checkpoint", clock=args.clock)
    backend.warm_up(subnet, shapes)
    figures = backend.measure(subnet, shapes, protocol)
    ppl = perplexity(SuperNetwork.load(args.model), subnet, tokens, seq_len=128).value
    return row(name, subnet, figures.model_bytes, figures.to_dict(), ppl)


def ort_row(args, subnet, precision, out, shapes, protocol, tokens) -> dict:
    from llamanas_deploy.runtime import open_artifact, perplexity

    log(f"sub-network, ORT {precision}: exporting, verifying, measuring")
    settings = ExportSettings(precision=precision, max_eval_tokens=args.eval_tokens)
    bench = BenchSettings(shapes=shapes, protocol=protocol, threads=args.threads, clock=args.clock)
    manifest = export(args.model, args.space, subnet, settings, out=out, bench=bench).manifest
    ppl = perplexity(open_artifact(out).decoder(threads=args.threads), tokens, seq_len=128).perplexity
    return row(f"sub-network, ORT {precision}", subnet, manifest["size"]["onnx_bytes"], manifest["measured"], ppl)


def row(name: str, subnet, nbytes: int, figures: dict, ppl: float) -> dict:
    flagged = any(figures[k]["flagged"] for k in ("prefill_ms", "decode_ms", "throughput_tok_s"))
    return {
        "name": name,
        "subnet_id": subnet.id,
        "size_mb": nbytes / 1e6,
        "prefill_ms": figures["prefill_ms"]["median"],
        "decode_ms": figures["decode_ms"]["median"],
        "tok_s": figures["throughput_tok_s"]["median"],
        "perplexity": ppl,
        "flagged": flagged,
    }


def render(rows: list[dict], args, subnet, shapes) -> str:
    first = rows[0]
    body = [
        [
            r["name"], r["size_mb"], r["prefill_ms"], r["decode_ms"], r["tok_s"], r["perplexity"],
            f"{first['size_mb'] / r['size_mb']:.2f}x", f"{first['decode_ms'] / r['decode_ms']:.2f}x",
            f"{r['tok_s'] / first['tok_s']:.2f}x", f"{(r['perplexity'] / first['perplexity'] - 1) * 100:+.1f}%",
            "noisy" if r["flagged"] else "",
        ]
        for r in rows
    ]  # fmt: skip
    headers = ["model", "size MB", "prefill ms", "decode ms/tok", "tok/s", "ppl",
               "smaller", "decode speed-up", "tok/s ratio", "ppl change", ""]  # fmt: skip
    head = (
        f"{args.model}: sub-network {subnet.id} {subnet.to_json()}\n"
        f"batch 1, prompt {shapes.prompt_len}, decode with {shapes.context_len} cached tokens, "
        f"{shapes.gen_len} generated; {args.threads} thread(s), {args.clock} clock; ratios vs the first row"
    )
    return head + "\n" + table(body, headers)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
