"""Cost of profiling a device: time to profile N sub-networks of the tiny space, per backend.

Runs `profile` (the library call behind `llamanas profile`) for each backend into a scratch
directory, side by side in one run, and prints a table: wall seconds in all and per
sub-network, the median robust CV of each figure, and how many sub-networks stayed flagged.

    python benchmarks/profile_cost.py --samples 5 --backends torch,torch-compile,onnxruntime
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from llamanas_deploy.cli.common import ProgressPrinter, table
from llamanas_deploy.concepts import CLOCKS, TIMED_FIGURES
from llamanas_deploy.errors import BadInputError
from llamanas_deploy.profiler import ProfileSettings, Protocol, Shapes, profile, read_profile
from llamanas_deploy.profiler.backends import BACKENDS


def main() -> None:
    args = _parse()
    backends = args.backends.split(",") if args.backends else [b for b in ("torch", "torch-compile", "onnxruntime") if b in BACKENDS]
    rows = []
    with tempfile.TemporaryDirectory(prefix="profile-cost-") as scratch:
        for backend in backends:
            rows.append(_cost(backend, Path(scratch) / backend, args))
    headers = ["backend", "sub-networks", "wall s", "s / sub-network", *(f"median CV {f}" for f in TIMED_FIGURES), "flagged"]
    print(table(rows, headers))
    torch_row = next((r for r in rows if r[0] == "torch" and isinstance(r[3], float)), None)
    if torch_row:
        print("\ncost relative to torch eager: " + ", ".join(
            f"{r[0]} {r[3] / torch_row[3]:.1f}x" for r in rows if isinstance(r[3], float)))  # fmt: skip


def _cost(backend: str, out: Path, args: argparse.Namespace) -> list:
    print(f"profiling {args.samples} sub-networks with {backend} ...", file=sys.stderr)
    start = time.perf_counter()
    printer = ProgressPrinter()
    try:
        settings = ProfileSettings(
            backend=backend,
            samples=args.samples,
            threads=args.threads,
            clock=args.clock,
            shapes=Shapes(1, args.prompt_len, args.context_len, args.gen_len),
            protocol=Protocol(warmup=args.warmup, repeats=args.repeats),
        )
        profile("tiny", "tiny", settings, target=f"cost-{backend}", out=out, callback=printer)
    except BadInputError as err:
        return [backend, 0, f"unavailable: {err}", "-", "-", "-", "-", "-"]
    finally:
        printer.close()
    wall = time.perf_counter() - start
    records = read_profile(out).records
    cvs = [statistics.median(r.raw[f]["cv"] for r in records) for f in TIMED_FIGURES]
    return [backend, len(records), wall, wall / len(records), *cvs, sum(r.flagged for r in records)]


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--backends", default="", help="comma-separated; default: torch, torch-compile, onnxruntime")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=CLOCKS, default="wall")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--context-len", type=int, default=128)
    p.add_argument("--gen-len", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    return p.parse_args()


if __name__ == "__main__":
    main()
