"""One-shot fine-tuning vs standard continued training of a trained network: held-out perplexity.

The paper's setting: an already-trained LLaMA is fine-tuned once. Here the start point is the
`tiny` shape trained normally (full network only, `--strategy full`) from scratch for
`--pretrain-steps` steps, cached in --work so reruns reuse it. From that checkpoint every arm runs
`--steps` steps on the same data in the same order (pydoc training split) with the same schedule:

- standard: the full network only, continued (`llamanas finetune --strategy full`);
- one-shot paper: each step the full network, then one random sub-network (`--strategy paper`);
- optional `--variants`: sandwich (full + smallest + random), distill (paper scheme, sub-networks
  learn the full network's logits), reorder (paper scheme after sorting MLP neurons by importance).

A one-shot step costs about 1.7x a standard step (two forward/backward passes); the paper compares
equal steps and data, so does this. Rows also show the start point itself sliced, before and after
reordering its MLP neurons by importance. Each row: held-out perplexity (shipped `tiny` held-out
text) of the full network, a middle and the smallest sub-network of the `tiny` space.

    python benchmarks/oneshot_vs_standard.py --threads 1          # ~12-15 min on 1 thread
    python benchmarks/oneshot_vs_standard.py --threads 1 --variants paper,sandwich,distill,reorder

Runs are kept in --work (resumable: rerun the same command after an interruption).
"""

from __future__ import annotations

import argparse
from dataclasses import replace

VARIANTS = {
    "paper": {"strategy": "paper"},
    "sandwich": {"strategy": "sandwich"},
    "distill": {"strategy": "paper", "distill": True},
    "reorder": {"strategy": "paper", "reorder_neurons": True},
}
CLEARLY_BETTER = 1.10  # standard / one-shot perplexity of the smallest sub-network


def main() -> None:
    args = _parse()
    import torch

    from llamanas_deploy import evaluate as ev
    from llamanas_deploy import finetuning as ft
    from llamanas_deploy.model.importance import reorder_neurons_
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
    heldout = ev.load_heldout("tiny", max_tokens=args.eval_tokens)

    def measure(supernet) -> dict[str, float]:
        return {k: ev.perplexity(supernet, c, heldout).value for k, c in subnets.items()}

    pretrain = ft.FinetuneSettings(
        steps=args.pretrain_steps, batch_size=args.batch_size, seq_len=128, lr=args.pretrain_lr,
        warmup_steps=args.pretrain_steps // 10, weight_decay=0.1, strategy="full", from_scratch=True, seed=args.seed,
        save_every=50,
    )  # fmt: skip
    start = f"{args.work}/start-standard-p{args.pretrain_steps}-b{args.batch_size}-lr{args.pretrain_lr:g}-seed{args.seed}"
    ft.finetune("tiny", space, ["pydoc-train"], pretrain, out=start)

    supernet = SuperNetwork.load(start)
    results = {"start point (trained, sliced)": measure(supernet)}
    ids = ft.training_rows(start, ["pydoc-train"], "text", pretrain.seq_len)
    reorder_neurons_(supernet.model, [ft.step_batch(ids, pretrain, s) for s in range(4)])
    results["start point, neurons reordered"] = measure(supernet)

    # another seed: the fine-tuning arms read batches in another order than the pre-training did
    tune = replace(pretrain, steps=args.steps, lr=args.lr, warmup_steps=args.steps // 10, from_scratch=False, seed=args.seed + 1,
                   save_every=25)
    arms = {"standard (continued)": replace(tune, strategy="full")}
    arms |= {f"one-shot {v}": replace(tune, **VARIANTS[v]) for v in args.variants.split(",")}
    for name, settings in arms.items():
        slug = name.replace(" (continued)", "").replace(" ", "-")
        out = f"{start}-then-{slug}-s{args.steps}-lr{args.lr:g}"
        ft.finetune(start, space, ["pydoc-train"], settings, out=out)
        results[name] = measure(SuperNetwork.load(out))
    _report(results, subnets, heldout, args, table)


def _report(results: dict, subnets: dict, heldout: list, args, table) -> None:
    names = list(subnets)
    print(
        f"held-out perplexity ({len(heldout)} tokens); start: standard training from scratch, "
        f"{args.pretrain_steps} steps; then {args.steps} steps per arm (batch {args.batch_size} x 128, lr {args.lr:g}); "
        + "sub-networks: " + ", ".join(f"{k} = {c.num_layers} layers x {c.intermediate_sizes[0]}" for k, c in subnets.items())
    )  # fmt: skip
    rows = [[arm, *(f"{r[k]:.1f}" for k in names), f"{r['smallest'] / r['full']:.2f}x"] for arm, r in results.items()]
    print(table(rows, ["arm", *names, "smallest/full"]))
    print()
    standard = results["standard (continued)"]
    oneshot = {arm: r for arm, r in results.items() if arm.startswith("one-shot")}
    ratio_rows = [[arm, *(f"{standard[k] / r[k]:.2f}x" for k in names)] for arm, r in oneshot.items()]
    print("standard (continued) perplexity / one-shot perplexity (> 1: one-shot better)")
    print(table(ratio_rows, ["one-shot arm", *names]))
    paper = oneshot.get("one-shot paper") or next(iter(oneshot.values()))
    gain, cost = standard["smallest"] / paper["smallest"], paper["full"] / standard["full"]
    verdict = "yes" if gain >= CLEARLY_BETTER else "no"
    print(
        f"\none-shot made the smallest sub-network clearly better (>= {CLEARLY_BETTER:.2f}x): {verdict} — "
        f"smallest {gain:.2f}x lower perplexity, full network {cost:.2f}x the standard perplexity"
    )


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=400, help="Standard training from scratch: the start point.")
    parser.add_argument("--pretrain-lr", type=float, default=3e-3)
    parser.add_argument("--steps", type=int, default=200, help="Steps of every arm, from the start point.")
    parser.add_argument("--lr", type=float, default=1e-3, help="Peak learning rate of the arms.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", default="paper", help=f"Comma-separated one-shot arms from {list(VARIANTS)}.")
    parser.add_argument("--eval-tokens", type=int, default=4096, help="Held-out tokens per evaluation.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--work", default="runs/oneshot_vs_standard", help="Directory for the start point and the arms.")
    return parser.parse_args()


if __name__ == "__main__":
    main()
