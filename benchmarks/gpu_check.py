"""What `benchmarks/gpu_check.sh` measures on a CUDA machine, printed as one table.

7B-shaped paper space (LLaMA2-7B shape, random weights, bf16): set-up seconds, decode ms/token
and tokens/s at batch 1 and 16 (context 128), eager vs CUDA graphs, and the achieved fraction
of memory bandwidth, for the full network, the paper's 24-layer net (16 x 11008 + 8 x 5504) and
the smallest. Tiny default: the artifacts `llamanas export --device cuda` writes (fp16, and int4
MatMulNBits over it; verified on the GPU, benched through IO binding) vs torch (CUDA graphs, bf16)
at batch 1. Nothing is downloaded; the artifact rows need onnxruntime-gpu installed (the `cuda`
extra) and print the export's one-line refusal instead when it is missing.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from setup_cost import LLAMA2_7B  # noqa: E402

REPEATS = 30


def _median_ms(backend, workload) -> float:
    for _ in range(3):
        backend.time_ms(workload)
    return statistics.median(backend.time_ms(workload) for _ in range(REPEATS))


def seven_b_rows(config: Path) -> list[dict]:
    import torch

    from llamanas_deploy.analytics import bandwidth_fraction, decode_step_bytes
    from llamanas_deploy.model.families import read_shape
    from llamanas_deploy.profiler.backends.torch_backend import TorchBackend, TorchEagerBackend
    from llamanas_deploy.profiler.base import Shapes
    from llamanas_deploy.profiler.fingerprint import memory_bandwidth
    from llamanas_deploy.subnet_config import SubnetConfig

    peak = memory_bandwidth(torch.cuda.current_device())["peak_gb_s"]
    shape = read_shape(config)
    nets = {
        "full 32x11008": SubnetConfig(num_layers=32, intermediate_sizes=[11008] * 32),
        "paper 16x11008+8x5504": SubnetConfig(num_layers=24, intermediate_sizes=[11008] * 16 + [5504] * 8),
        "smallest 24x5504": SubnetConfig(num_layers=24, intermediate_sizes=[5504] * 24),
    }
    rows = []
    for name, subnet in nets.items():
        graphs = TorchBackend(config, "bf16", "cuda", 1, "random")
        torch.cuda.synchronize()
        start = time.perf_counter()
        graphs.load(subnet)
        torch.cuda.synchronize()
        setup_s = time.perf_counter() - start
        eager = TorchEagerBackend(config, "bf16", "cuda", 1, "random")
        eager._net, eager._vocab = graphs._net, graphs._vocab
        for batch in (1, 16):
            shapes = Shapes(batch_size=batch, prompt_len=128, context_len=128, gen_len=32)
            moved = decode_step_bytes(shape, subnet, 128, batch, 2)
            for mode, backend in (("eager", eager), ("cuda-graphs", graphs)):
                ms = _median_ms(backend, backend.decode(shapes))
                rows.append({"net": name, "setup_s": setup_s, "batch": batch, "mode": mode, "decode_ms": ms,
                             "tok_s": batch * 1e3 / ms, "bw_fraction": bandwidth_fraction(moved, ms, peak)})  # fmt: skip
                print(f"# {rows[-1]}", file=sys.stderr)
        eager._net = None
        graphs.unload()
    return rows


def tiny_rows(work: Path) -> list[dict]:
    """torch (bf16, CUDA graphs) vs the artifacts `llamanas export --device cuda` writes (fp16, int4),
    each verified on the GPU by the export and benched by it through IO binding, at the same shapes."""
    from llamanas_deploy.exporter import BenchSettings, ExportSettings, export
    from llamanas_deploy.model.supernet import SuperNetwork
    from llamanas_deploy.profiler.backends.torch_backend import TorchBackend
    from llamanas_deploy.profiler.base import Shapes
    from llamanas_deploy.profiler.stats import Protocol
    from llamanas_deploy.runtime import generate_text
    from llamanas_deploy.space import load_space

    space, supernet = load_space("tiny"), SuperNetwork.load("tiny")
    subnet, shapes = space.largest, Shapes()
    rows = []
    torch_backend = TorchBackend(supernet.source, "bf16", "cuda", 1, "checkpoint")
    torch_backend.load(subnet)
    ms = _median_ms(torch_backend, torch_backend.decode(shapes))
    torch_backend.unload()
    rows.append({"what": "torch bf16, CUDA graphs", "decode_ms": ms})
    for precision in ("fp16", "int4"):
        what = f"ORT {precision}, CUDA provider"
        try:
            result = export(supernet, space, subnet, ExportSettings(precision=precision, device="cuda"), out=work / precision,
                            bench=BenchSettings(shapes=shapes, protocol=Protocol(visits=1)))  # fmt: skip
            text = generate_text(result.directory, "The", max_new_tokens=16)
        except Exception as err:  # noqa: BLE001  (reported in the table, the check goes on)
            rows.append({"what": what, "error": f"{type(err).__name__}: {err}"[:160]})
            continue
        m = result.manifest
        check = m["verification"]["fp16_vs_torch"]["decode"]
        quantized = m["verification"].get("quantized_vs_fp16", {})
        rows.append({"what": what, "decode_ms": m["measured"]["decode_ms"]["median"],
                     "io_binding": m["measured"]["io_binding"], "max_abs_diff": check["logits_max_abs_diff"],
                     "tolerance": check["logits_tolerance"], "ppl_change_pct": quantized.get("perplexity_change_pct"),
                     "generate_tok_s": text.decode_tok_s, "provider": m["execution_provider"]})  # fmt: skip
        print(f"# {rows[-1]}", file=sys.stderr)
    return rows


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        print(f"error: gpu_check needs a CUDA GPU (torch {torch.__version__} sees none)", file=sys.stderr)
        raise SystemExit(2)
    import onnxruntime
    import transformers

    from llamanas_deploy.profiler.fingerprint import memory_bandwidth

    bandwidth = memory_bandwidth(torch.cuda.current_device())
    print(f"machine: {torch.cuda.get_device_name()}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"onnxruntime {onnxruntime.__version__}; memory bandwidth {json.dumps(bandwidth)}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps(LLAMA2_7B))
        rows = seven_b_rows(config)
        tiny = tiny_rows(Path(tmp))
    print(f"{'7B-shaped, bf16, context 128':<28} {'set-up s':>8} {'batch':>5} {'mode':<12} {'ms/token':>9} {'tok/s':>8} {'BW frac':>8}")
    for r in rows:
        print(f"{r['net']:<28} {r['setup_s']:>8.1f} {r['batch']:>5} {r['mode']:<12} {r['decode_ms']:>9.2f} "
              f"{r['tok_s']:>8.0f} {r['bw_fraction']:>8.2f}")  # fmt: skip
    full = {(r["batch"], r["mode"]): r["decode_ms"] for r in rows if r["net"].startswith("full")}
    small = {(r["batch"], r["mode"]): r["decode_ms"] for r in rows if r["net"].startswith("smallest")}
    for key in sorted(full):
        print(f"speed-up smallest vs full, batch {key[0]}, {key[1]}: {full[key] / small[key]:.2f}x")
    print(f"{'tiny default (largest), batch 1':<34} {'decode ms':>9} {'vs torch':>8} {'max|diff|':>10} "
          f"{'tolerance':>10} {'ppl vs fp16':>11} {'gen tok/s':>9}")  # fmt: skip
    torch_ms = tiny[0]["decode_ms"]
    for r in tiny:
        if "error" in r:
            print(f"{r['what']:<34} not built: {r['error']}")
            continue
        diff = f"{r['max_abs_diff']:.4f}" if "max_abs_diff" in r else ""
        tol = f"{r['tolerance']:.4f}" if "tolerance" in r else ""
        ppl = f"{r['ppl_change_pct']:+.2f}%" if r.get("ppl_change_pct") is not None else ""
        gen = f"{r['generate_tok_s']:.0f}" if "generate_tok_s" in r else ""
        print(f"{r['what']:<34} {r['decode_ms']:>9.3f} {torch_ms / r['decode_ms']:>7.2f}x {diff:>10} {tol:>10} "
              f"{ppl:>11} {gen:>9}")  # fmt: skip


if __name__ == "__main__":
    main()
