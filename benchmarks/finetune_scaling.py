"""Fine-tuning in 1 and 2 processes (torchrun + FSDP2) on the same global batch: memory and step time.

Each arm is `torchrun --nproc-per-node N` running `llamanas_deploy.finetuning` (the library call the
CLI makes) on a from-scratch super-network of --hidden x --layers x --intermediate (the tokenizer
of the built-in `tiny`), --steps steps of the paper scheme (full + one sub-network). Every process
reports its peak resident memory (on GPUs: peak allocated), and the checkpoint shard it wrote (its
weights and AdamW state) is measured on disk; rank 0 times its steps (the first two and the last,
which writes the checkpoint, are left out). With
FSDP2 each process holds 1/N of the weights, gradients and AdamW state, so memory per process
falls; on CPU the processes share the machine's cores, so the step time shows the cost of the
collectives, not a speed-up.

    python benchmarks/finetune_scaling.py                  # CPU, gloo (~3 min on 2 cores)
    python benchmarks/finetune_scaling.py --device cuda    # GPUs, NCCL, bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ARMS = (1, 2)


def main() -> None:
    args = _parse()
    if args.worker:
        _worker(args)
        return
    from llamanas_deploy.cli.common import table

    work = Path(args.work)
    model, space = _model_and_space(args, work)
    results = {}
    for nproc in ARMS:
        report = work / f"n{nproc}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", __file__,
               "--worker", "--model", str(model), "--space", str(space), "--out", str(work / f"run-n{nproc}"),
               "--report", str(report), *_shared(args)]  # fmt: skip
        subprocess.run(cmd, check=True, env=os.environ | {"OMP_NUM_THREADS": str(args.threads)})
        results[nproc] = json.loads(report.read_text())
    _print(results, args, table)


def _shared(args) -> list[str]:
    return ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
            "--device", args.device, "--threads", str(args.threads)]  # fmt: skip


def _model_and_space(args, work: Path) -> tuple[Path, Path]:
    """A config.json (random weights are drawn by --from-scratch) with tiny's tokenizer, and its space."""
    import shutil

    from llamanas_deploy.jsonfiles import read_json, write_json
    from llamanas_deploy.model.families import resolve_model_path

    tiny = resolve_model_path("tiny")
    model = work / "model"
    model.mkdir(parents=True, exist_ok=True)
    config = read_json(tiny / "config.json") | {
        "hidden_size": args.hidden, "num_hidden_layers": args.layers, "intermediate_size": args.intermediate,
        "num_attention_heads": args.hidden // 64, "num_key_value_heads": args.hidden // 64,
    }  # fmt: skip
    write_json(model / "config.json", config)
    shutil.copyfile(tiny / "tokenizer.json", model / "tokenizer.json")
    space = {
        "schema_version": 1,
        "name": "scaling",
        "super_network": {"num_hidden_layers": args.layers, "intermediate_size": args.intermediate},
        "depth": {"choices": [args.layers // 2, args.layers], "policy": "first"},
        "layer_dims": {"intermediate_sizes": {"choices": [args.intermediate // 2, args.intermediate], "policy": "first"}},
    }
    return model, write_json(work / "space.json", space)


def _worker(args) -> None:
    """One process of an arm: the library's finetune, timed by its progress events."""
    import shutil

    import torch
    import torch.distributed as dist

    from llamanas_deploy.distributed import rank
    from llamanas_deploy.finetuning import FinetuneSettings, finetune
    from llamanas_deploy.space import load_space

    torch.set_num_threads(args.threads)
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")  # kept after finetune, to gather figures
    if rank() == 0:
        shutil.rmtree(args.out, ignore_errors=True)
    stamps: list[float] = []

    def timer(event) -> None:
        if event.total and event.done:
            stamps.append(time.perf_counter())

    # one step more than is run: the call stops before gathering the final checkpoint
    settings = FinetuneSettings(steps=args.steps + 1, batch_size=args.batch_size, seq_len=args.seq_len, lr=1e-4,
                                from_scratch=True, save_every=args.steps + 1, device=args.device)  # fmt: skip
    finetune(args.model, load_space(args.space), ["pydoc-train"], settings, out=args.out, callback=timer,
             stop_after=args.steps)  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    peaks: list = [None] * dist.get_world_size()
    dist.all_gather_object(peaks, peak)
    dist.barrier()
    dist.destroy_process_group()
    if rank() == 0:
        steps = [b - a for a, b in zip(stamps[1:-2], stamps[2:-1])]
        shards = [f.stat().st_size / 2**20 for f in Path(args.out).glob("checkpoint/state-*/*.safetensors")]
        report = {"processes": len(peaks), "peak_mib": peaks, "shard_mib": shards, "step_s": statistics.median(steps),
                  "tokens_per_step": args.batch_size * args.seq_len}  # fmt: skip
        Path(args.report).write_text(json.dumps(report))


def _print(results: dict, args, table) -> None:
    one, two = results[1], results[2]
    memory = "GPU peak allocated" if args.device == "cuda" else "peak RSS"
    print(f"super-network {args.layers} layers x hidden {args.hidden} x MLP {args.intermediate}, global batch "
          f"{args.batch_size} x {args.seq_len} tokens, paper scheme (full + 1 sub-network), {args.steps} steps, "
          f"device {args.device}, {args.threads} thread(s) per process")  # fmt: skip
    rows = [
        ("weights + AdamW state per process, MiB", max(one["shard_mib"]), max(two["shard_mib"])),
        (f"{memory} per process, MiB (max over ranks)", max(one["peak_mib"]), max(two["peak_mib"])),
        ("step time, s (median)", one["step_s"], two["step_s"]),
        ("tokens/s (whole job)", one["tokens_per_step"] / one["step_s"], two["tokens_per_step"] / two["step_s"]),
    ]
    print(table([(name, a, b, f"{b / a:.2f}x") for name, a, b in rows], ["", "1 process", "2 processes", "2 / 1"]))


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8, help="Global batch (rows), the same for every arm.")
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process.")
    parser.add_argument("--work", default="runs/finetune_scaling")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--model", "--space", "--out", "--report"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    main()
