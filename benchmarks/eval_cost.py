"""What one accuracy evaluation costs on a real model, and how few held-out tokens still rank sub-networks right.

A search spends most of its time in its accuracy objective: held-out perplexity of each candidate,
measured inside the super-network. On SmolLM2-135M that is seconds per candidate on a CPU. This
samples `--subnets` sub-networks of the `smollm2-135m` space (stratified: smallest and largest first),
measures each one's perplexity on the first N tokens of the shipped held-out text for every N in
`--tokens`, and prints, per N: seconds per evaluation, what a 100-evaluation search would spend on
it, and the Spearman rank correlation of the sub-networks' perplexities with the largest N's.

    make smollm2
    python benchmarks/eval_cost.py --threads 2 --subnets 10 --tokens 256,512,1024,2048
"""

from __future__ import annotations

import argparse
import time

SEQ_LEN = 256
SEARCH_EVALUATIONS = 100


def main() -> None:
    args = _parse()
    import torch
    from scipy.stats import spearmanr

    from llamanas_deploy.cli.common import table
    from llamanas_deploy.evaluate import load_heldout, perplexity
    from llamanas_deploy.model.supernet import SuperNetwork
    from llamanas_deploy.space import load_space

    torch.set_num_threads(args.threads)
    space = load_space("smollm2-135m")
    supernet = SuperNetwork.load(args.model)
    supernet.check_space(space)
    subnets = space.sample_stratified(args.subnets, seed=0)
    sizes = sorted(int(n) for n in args.tokens.split(","))
    ids = load_heldout(args.model, max(sizes))
    values: dict[int, list[float]] = {n: [] for n in sizes}
    seconds: dict[int, float] = dict.fromkeys(sizes, 0.0)
    for subnet in subnets:
        for n in sizes:
            start = time.perf_counter()
            values[n].append(perplexity(supernet, subnet, ids, seq_len=SEQ_LEN, max_tokens=n).value)
            seconds[n] += time.perf_counter() - start
    reference = values[sizes[-1]]
    rows = []
    for n in sizes:
        per_eval = seconds[n] / len(subnets)
        rho = spearmanr(values[n], reference).statistic
        rows.append([n, f"{per_eval:.2f}", f"{per_eval * SEARCH_EVALUATIONS / 60:.1f}", f"{rho:.3f}"])
    print(f"{args.model}: {len(subnets)} sub-networks of {space.id}, {args.threads} thread(s), windows of {SEQ_LEN}")
    print(table(rows, ["held-out tokens", "s / evaluation", f"min / {SEARCH_EVALUATIONS} evaluations",
                       f"Spearman vs {sizes[-1]}"]))  # fmt: skip


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="the super-network (default: the prepared SmolLM2)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--subnets", type=int, default=10)
    parser.add_argument("--tokens", default="256,512,1024,2048")
    return parser.parse_args()


if __name__ == "__main__":
    main()
