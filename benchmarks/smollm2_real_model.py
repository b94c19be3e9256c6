"""A real pretrained LLaMA on this machine: SmolLM2-135M's sub-networks, one-shot fine-tuned vs training-free.

Every row is one architecture of the `smollm2-135m` space (layers dropped in the prepared
super-network's measured order, neurons ordered by importance). For each, side by side in one run:

- params, and decode latency in the deployed format on the CPU (onnxruntime, the fused fp32 graph,
  `--threads` threads, batch 1, one token against 128 cached ones; the profiler's protocol, every
  architecture measured `--visits` times in turns; the fast end of the sets) and tokens/s;
- held-out perplexity (the toolkit's shipped held-out text, first `--eval-tokens` tokens, windows
  of 256) of the training-free sub-network: layer removal by block influence (ShortGPT) and/or
  importance-ordered width pruning, sliced from the prepared super-network, no training;
- the same architecture sliced from the one-shot fine-tuned super-network (`--finetuned DIR`, the
  output of `llamanas finetune --model smollm2-135m --space smollm2-135m ...`), when given.

Latency does not depend on weight values, so one measurement serves both columns.

`--llamacpp` adds llama.cpp running the wheel's own Q4_1 GGUF of the full model (llama-cpp-python,
the `llamacpp` extra; `llamacpp_loop.py`), same threads: decode ms per token after a 128-token
prompt (32 greedy tokens, the fast end of `--visits` runs: the profiler's decode is one token
against 128 cached ones, so the two differ by the cost of 16 more cached tokens on average) and
perplexity on the same tokens and windows.

    make smollm2
    python benchmarks/smollm2_real_model.py --threads 1 --finetuned runs/smollm2-ft --llamacpp
"""

from __future__ import annotations

import argparse

ROWS = {  # name -> (depth, width of every layer)
    "full 30 x 1536": (30, 1536),
    "26 layers x 1536": (26, 1536),
    "22 layers x 1536": (22, 1536),
    "30 x 1152": (30, 1152),
    "26 layers x 1152": (26, 1152),
    "30 x 768": (30, 768),
}
SEQ_LEN = 256


def main() -> None:
    args = _parse()
    import torch

    from llamanas_deploy.space import load_space

    space = load_space("smollm2-135m")
    subnets = {name: _subnet(space, depth, width) for name, (depth, width) in ROWS.items()}
    latency = _decode_latency(args, list(subnets.values()))
    torch.set_num_threads(args.eval_threads)  # accuracy does not depend on threads; it is only faster
    free = _perplexities("smollm2-135m", space, subnets, args.eval_tokens)
    tuned = _perplexities(args.finetuned, space, subnets, args.eval_tokens) if args.finetuned else {}
    _print(args, space, subnets, latency, free, tuned)
    if args.llamacpp:
        _print_llamacpp(args, latency[subnets["full 30 x 1536"].id][0], free[subnets["full 30 x 1536"].id])


def _subnet(space, depth: int, width: int):
    from llamanas_deploy.subnet_config import SubnetConfig

    return SubnetConfig(depth, (width,) * depth, space.kept_layers(depth)).canonical()


def _decode_latency(args, subnets: list) -> dict[str, tuple[float, float]]:
    """{subnet id: (decode ms, tokens/s)}, onnxruntime fp32, visits in turns."""
    from llamanas_deploy.profiler.backends import get_backend
    from llamanas_deploy.profiler.base import Shapes
    from llamanas_deploy.profiler.stats import Protocol

    backend = get_backend("onnxruntime")("smollm2-135m", "fp32", "cpu", threads=args.threads, clock="cpu")
    shapes = Shapes(batch_size=1, prompt_len=128, context_len=128, gen_len=32)
    for subnet in subnets:
        backend.warm_up(subnet, shapes)
    measured = backend.measure_visits(subnets, shapes, Protocol(visits=args.visits))
    return {s.id: (m.decode_ms.spread.best, m.throughput_tok_s.spread.best) for s, m in zip(subnets, measured)}


def _perplexities(model: str, space, subnets: dict, eval_tokens: int) -> dict[str, float]:
    from llamanas_deploy.evaluate import load_heldout, perplexity
    from llamanas_deploy.model.supernet import SuperNetwork

    supernet = SuperNetwork.load(model)
    supernet.check_space(space)
    ids = load_heldout(model, eval_tokens)
    return {s.id: perplexity(supernet, s, ids, seq_len=SEQ_LEN).value for s in subnets.values()}


def _print(args, space, subnets: dict, latency: dict, free: dict, tuned: dict) -> None:
    from llamanas_deploy.analytics import count_params
    from llamanas_deploy.cli.common import table
    from llamanas_deploy.model.families import read_shape

    shape = read_shape("smollm2-135m")
    full = next(iter(subnets.values()))
    rows = []
    for name, subnet in subnets.items():
        ms, tok_s = latency[subnet.id]
        row = [name, f"{count_params(shape, subnet)[0]:,}", f"{ms:.3f}", f"{latency[full.id][0] / ms:.2f}x",
               f"{tok_s:.0f}", f"{free[subnet.id]:.2f}"]  # fmt: skip
        if tuned:
            row += [f"{tuned[subnet.id]:.2f}", f"{(tuned[subnet.id] / tuned[full.id] - 1) * 100:+.1f}%"]
        rows.append(row)
    headers = ["sub-network", "params", "decode ms", "speed-up", "tok/s", "ppl training-free"]
    headers += ["ppl one-shot", "vs its full"] if tuned else []
    print(f"SmolLM2-135M, space {space.id}; onnxruntime fp32 (fused graph), {args.threads} thread(s), "
          f"best of {args.visits} visits; held-out perplexity on {args.eval_tokens} tokens, windows of {SEQ_LEN}")  # fmt: skip
    print(table(rows, headers))


def _print_llamacpp(args, onnx_full_ms: float, full_ppl: float) -> None:
    """llama.cpp on the wheel's Q4_1 GGUF of the full model: decode, and perplexity on the same tokens."""
    import time

    from llamacpp_loop import LlamaCppLoop

    from llamanas_deploy.evaluate import load_heldout
    from llamanas_deploy.model.packaged import packaged_file
    from llamanas_deploy.runtime import perplexity

    gguf = packaged_file("smollm2-135m")
    ids = load_heldout("smollm2-135m", args.eval_tokens)
    loop = LlamaCppLoop(gguf, time.process_time, threads=args.threads)
    loop.run(ids[:128], 8)  # warm-up
    ms = min(loop.run(ids[:128], 32)["decode_ms"] for _ in range(args.visits))
    ppl = perplexity(loop, ids, SEQ_LEN).perplexity
    print(f"\nllama.cpp, {gguf.name} (the full model), {args.threads} thread(s), CPU clock: decode {ms:.3f} ms/token "
          f"({onnx_full_ms / ms:.2f}x the ONNX fp32 full network's speed), held-out perplexity {ppl:.2f} "
          f"({(ppl / full_ppl - 1) * 100:+.1f}% vs the fp32 full network's {full_ppl:.2f})")  # fmt: skip


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-threads", type=int, default=2, help="torch threads for the perplexity columns")
    parser.add_argument("--visits", type=int, default=3)
    parser.add_argument("--eval-tokens", type=int, default=2048)
    parser.add_argument("--finetuned", help="the one-shot fine-tuned super-network directory")
    parser.add_argument("--llamacpp", action="store_true", help="add llama.cpp on the wheel's Q4_1 GGUF (the llamacpp extra)")
    return parser.parse_args()


if __name__ == "__main__":
    main()
