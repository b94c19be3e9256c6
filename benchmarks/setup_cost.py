"""Set-up cost of one 7B-shaped sub-network for profiling: seconds and peak resident memory.

    python benchmarks/setup_cost.py                  # smallest and largest, new and old path
    python benchmarks/setup_cost.py --paths new      # only today's path

Each measurement runs in a fresh subprocess (its peak resident set is its own): the
LLaMA2-7B shape of the paper's space, random weights in bf16 on the CPU, as
`llamanas profile --precision bf16` builds them.

- new: `profile.weights.subnet_model` — parameters allocated once in bf16, weights tiled from
  a small random pool (`model.build.init_for_timing_`).
- old: the path before issue 13, reproduced here — a float32 skeleton, every weight drawn in
  float32, then cast to bf16. It needs the fp32 model plus its bf16 copy; a run that would
  not fit in the memory available now is reported as such, not started.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "intermediate_size": 11008,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
}  # fmt: skip
GB = 1e9


def _kib(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def _old_path(config: Path, subnet):
    """Before issue 13: float32 skeleton, float32 draws copied in one tensor at a time, then a cast."""
    import torch

    from llamanas_deploy.model.build import build_skeleton, hf_config_for
    from llamanas_deploy.model.families import read_config_dict

    config_dict, path = read_config_dict(config)
    model = build_skeleton(hf_config_for(config_dict, list(subnet.intermediate_sizes), str(path)))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            elif param.dim() == 1:
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * 0.02)
    return model.to(torch.bfloat16).eval()


def child(path: str, which: str, config: Path) -> dict:
    import torch
    from transformers import LlamaForCausalLM  # noqa: F401  (library start-up time and memory before the baseline)

    from llamanas_deploy.profiler.weights import subnet_model
    from llamanas_deploy.space import load_space

    space = load_space("llama2-7b-paper")
    subnet = space.smallest if which == "smallest" else space.largest
    torch.set_num_threads(1)  # as the profiler's default
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _kib("VmRSS")
    start, start_cpu = time.perf_counter(), time.process_time()
    if path == "new":
        model = subnet_model(config, subnet, torch.bfloat16, "random", seed=0)
    else:
        model = _old_path(config, subnet)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = (_kib("VmHWM") - baseline) * 1024
    return {"path": path, "subnet": which, "layers": subnet.num_layers, "bytes": nbytes, "seconds": seconds,
            "cpu_seconds": cpu_seconds, "peak_bytes": peak, "load_avg": os.getloadavg()[0]}  # fmt: skip


def available_bytes() -> int:
    line = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemAvailable:"))
    return int(line.split()[1]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default="new,old")
    parser.add_argument("--subnets", default="smallest,largest")
    parser.add_argument("--child", nargs=3, metavar=("PATH", "SUBNET", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], Path(args.child[2]))))
        return

    from llamanas_deploy.analytics import subnet_stats
    from llamanas_deploy.model.families import ModelShape
    from llamanas_deploy.space import load_space

    space = load_space("llama2-7b-paper")
    shape = ModelShape.from_config_dict(LLAMA2_7B, "llama2-7b")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps(LLAMA2_7B))
        for which in args.subnets.split(","):
            bf16 = subnet_stats(shape, space.smallest if which == "smallest" else space.largest).fp16_bytes
            for path in args.paths.split(","):
                need = bf16 * (2.2 if path == "old" else 1.3) + 1.0 * GB  # old: the fp32 model (2x) + one tensor
                if need > available_bytes():
                    rows.append({"path": path, "subnet": which, "bytes": bf16, "skipped":
                                 f"needs ~{need / GB:.0f} GB, {available_bytes() / GB:.0f} GB available"})  # fmt: skip
                    continue
                out = subprocess.run([sys.executable, __file__, "--child", path, which, str(config)],
                                     capture_output=True, text=True, check=True)  # fmt: skip
                rows.append(json.loads(out.stdout.splitlines()[-1]))
                print(f"# {rows[-1]}", file=sys.stderr)
    _print_table(rows)


def _print_table(rows: list[dict]) -> None:
    """CPU seconds (user + system, this process) are the comparable figure on a shared machine; wall seconds
    follow the machine's load (its 1-minute load average at the end of each run is shown)."""
    new = {r["subnet"]: r for r in rows if r["path"] == "new" and "seconds" in r}
    print(f"{'sub-network':<12} {'bf16 GB':>8} {'path':<5} {'CPU s':>7} {'wall s':>7} {'load':>5} "
          f"{'peak RSS GB':>12} {'peak/bytes':>11} {'old/new CPU s':>14}")  # fmt: skip
    for r in rows:
        if "skipped" in r:
            print(f"{r['subnet']:<12} {r['bytes'] / GB:>8.2f} {r['path']:<5} not run: {r['skipped']}")
            continue
        ratio = ""
        if r["path"] == "old" and r["subnet"] in new:
            ratio = f"{r['cpu_seconds'] / new[r['subnet']]['cpu_seconds']:.1f}x"
        print(f"{r['subnet']:<12} {r['bytes'] / GB:>8.2f} {r['path']:<5} {r['cpu_seconds']:>7.1f} {r['seconds']:>7.1f} "
              f"{r['load_avg']:>5.1f} {r['peak_bytes'] / GB:>12.2f} {r['peak_bytes'] / r['bytes']:>11.2f} {ratio:>14}")


if __name__ == "__main__":
    main()
