"""One-shot super-network training vs standard training then slicing: held-out perplexity.

Every arm starts from the same random weights of the `tiny` shape, reads the same data in the
same order (the pydoc training split) and is evaluated on the shipped held-out text. Budget: a
one-shot step is one full-network pass plus one sub-network pass, so the standard arm (full
network only) gets twice the steps — as many passes, and more compute, than the one-shot arm.
A further row slices the standard model after reordering its MLP neurons by importance.

    python benchmarks/oneshot_vs_standard.py                  # ~10-15 min on 2 cores
    python benchmarks/oneshot_vs_standard.py --variants paper,sandwich,distill --steps 200

Runs are kept in --work (resumable: rerun the same command after an interruption).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

VARIANTS = {
    "paper": {"strategy": "paper"},
    "sandwich": {"strategy": "sandwich"},
    "distill": {"strategy": "paper", "distill": True},
}


def main() -> None:
    args = _parse()
    import torch

    from llamanas_deploy import evaluate as ev
    from llamanas_deploy import finetune as ft
    from llamanas_deploy.cli.common import table
    from llamanas_deploy.model.supernet import SuperNetwork
    from llamanas_deploy.space import load_space
    from llamanas_deploy.subnet_config import SubnetConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    space = load_space("tiny")
    widths = space.dim("intermediate_sizes").choices
    depth = space.depth_choices[len(space.depth_choices) // 2]
    subnets = {
        "full": space.largest,
        "middle": SubnetConfig(depth, (widths[len(widths) // 2],) * depth),
        "smallest": space.smallest,
    }
    base = ft.FinetuneSettings(
        steps=args.steps, batch_size=args.batch_size, seq_len=128, lr=args.lr, warmup_steps=args.steps // 10,
        weight_decay=0.1, from_scratch=True, seed=args.seed,
    )  # fmt: skip
    arms = {"standard": replace(base, strategy="full", steps=2 * args.steps)}
    arms |= {f"one-shot {v}": replace(base, **VARIANTS[v]) for v in args.variants.split(",")}
    heldout = ev.load_heldout("tiny", max_tokens=args.eval_tokens)

    results = {}
    for name, settings in arms.items():
        out = f"{args.work}/{name.replace(' ', '-')}-s{args.steps}-b{args.batch_size}"
        ft.finetune("tiny", space, ["pydoc-train"], out, settings, save_every=20)
        supernet = SuperNetwork.load(out)
        results[name] = {k: ev.perplexity(supernet, c, heldout).value for k, c in subnets.items()}
        if name == "standard":
            ids = ft.training_rows("tiny", ["pydoc-train"], "text", settings.seq_len)
            ft.reorder_neurons_(supernet.model, [ft._batch(ids, settings, s) for s in range(4)])
            results["standard, neurons reordered"] = {
                k: ev.perplexity(supernet, c, heldout).value for k, c in subnets.items()
            }
    _report(results, subnets, heldout, table)


def _report(results: dict, subnets: dict, heldout: list, table) -> None:
    names = list(subnets)
    print(f"held-out perplexity ({len(heldout)} tokens); sub-networks: "
          + ", ".join(f"{k} = {c.num_layers} layers x {c.intermediate_sizes[0]}" for k, c in subnets.items()))
    rows = [[arm, *(r[k] for k in names), f"{r['smallest'] / r['full']:.2f}x"] for arm, r in results.items()]
    print(table(rows, ["training", *names, "smallest/full"]))
    print()
    standard = results["standard"]
    ratio_rows = [
        [arm, *(f"{standard[k] / r[k]:.2f}x" for k in names)]
        for arm, r in results.items() if arm.startswith("one-shot")
    ]  # fmt: skip
    print("standard perplexity / one-shot perplexity (> 1: one-shot better)")
    print(table(ratio_rows, ["one-shot arm", *names]))


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="One-shot steps (standard: twice as many).")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default="paper", help=f"Comma-separated one-shot arms from {list(VARIANTS)}.")
    parser.add_argument("--eval-tokens", type=int, default=4096, help="Held-out tokens per evaluation.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--work", default="runs/oneshot_vs_standard", help="Directory for the trained arms.")
    return parser.parse_args()


if __name__ == "__main__":
    main()
