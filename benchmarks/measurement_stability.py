"""Do measurements hold on this machine? Two runs of the same unseen sub-networks, with and without
the anchor's drift correction, and a predictor fitted in an earlier run judged on a later one.

One script, three profiles, in this order (each a separate `profile` call, minutes apart):

1. `train`: the space's sampling plan of `--train` sub-networks (a predictor's training data);
2. `test-1`: `--test` sub-networks the plan does not hold (seeded random draw);
3. `test-2`: the same `--test` sub-networks again.

Every profile measures the space's anchor sub-network after every `--anchor-every` visits. Printed:

- agreement of test-1 and test-2 within +-10 %, figures as measured and anchor-corrected;
- a predictor fitted on `train` (as measured, and anchor-corrected) judged on test-2: as measured
  against test-2 as measured; anchor-corrected as a fraction of the anchor's figure on both sides
  (the prediction over train's anchor scale against the measurement over the anchor measured
  around it);
- each run's anchor range (how far the machine's speed moved) and the anchors' share of the
  measuring time (their cost);
- how many records each run measured under load (`profile.load`).

    python benchmarks/measurement_stability.py [--model tiny --space tiny] [--train 40 --test 14]
        [--visits 3] [--anchor-every 5] [--clock cpu] [--keep DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from llamanas_deploy.cli.common import table
from llamanas_deploy.predict.dataset import ProfileData, load_profile_data
from llamanas_deploy.predict.train import FitSettings, fit
from llamanas_deploy.profiler import Protocol
from llamanas_deploy.profiler.runner import ProfileSettings, profile
from llamanas_deploy.profiler.store import read_profile
from llamanas_deploy.space import load_space

METRIC = "decode_ms"
WITHIN = 10.0


def main() -> None:
    args = parse_args()
    space = load_space(args.space)
    train_plan = space.sample_stratified(args.train, seed=0)
    known = {c.id for c in train_plan}
    unseen = [c for c in space.sample_random(10 * args.test, seed=1) if c.id not in known]
    unseen = list({c.id: c for c in unseen}.values())[: args.test]
    settings = ProfileSettings(clock=args.clock, threads=1, protocol=Protocol(visits=args.visits),
                               anchor_every=args.anchor_every)  # fmt: skip
    work = Path(args.keep or tempfile.mkdtemp(prefix="stability-"))
    runs = {}
    for name, plan in (("train", train_plan), ("test-1", unseen), ("test-2", unseen)):
        started = time.perf_counter()
        profile(args.model, space, settings, target=name, out=work / name, plan=plan)
        runs[name] = {"dir": work / name, "wall_s": time.perf_counter() - started}
        print(f"{name}: {len(plan)} sub-networks in {runs[name]['wall_s']:.0f} s", flush=True)
    report = {"settings": vars(args), "runs": {n: run_facts(r["dir"], r["wall_s"]) for n, r in runs.items()}}
    report["agreement"] = agreement(work / "test-1", work / "test-2", space)
    report["prediction"] = prediction(work / "train", work / "test-2", space, args.model)
    show(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--space", default="tiny")
    parser.add_argument("--train", type=int, default=40)
    parser.add_argument("--test", type=int, default=14)
    parser.add_argument("--visits", type=int, default=3)
    parser.add_argument("--anchor-every", type=int, default=ProfileSettings().anchor_every)
    parser.add_argument("--clock", default="cpu", choices=("cpu", "wall"))
    parser.add_argument("--keep", help="Profile into this directory (kept) instead of a temporary one.")
    parser.add_argument("--json", help="Also write the figures here.")
    return parser.parse_args()


def run_facts(path: Path, wall_s: float) -> dict:
    prof = read_profile(path)
    plan_s = sum(r.raw.get("measure_s", 0.0) for r in prof.records)
    anchor_s = sum(r.raw.get("measure_s", 0.0) for r in prof.anchors)
    anchors = [a.value(METRIC) for a in prof.anchors]
    return {
        "wall_s": round(wall_s, 1),
        "records": len(prof.records),
        "anchors": len(anchors),
        "anchor_range_pct": round(100 * (max(anchors) / min(anchors) - 1), 1) if anchors else None,
        "anchor_cost_pct": round(100 * anchor_s / plan_s, 1) if plan_s else None,
        "loaded": sum(r.loaded for r in prof.records),
    }


def per_subnet(path: Path, space, drift: str) -> ProfileData:
    return load_profile_data(path, METRIC, space, min_subnets=2, drift=drift)


def within(predicted: np.ndarray, measured: np.ndarray) -> float:
    return float(100 * np.mean(np.abs(predicted / measured - 1) <= WITHIN / 100))


def relative(data: ProfileData) -> dict[str, float]:
    """Each sub-network's figure over the anchor's (corrected data / the anchor's scale)."""
    scale = data.anchor["scale"] if data.anchor else 1.0
    return {c.id: y / scale for c, y in zip(data.configs, data.y)}


def agreement(first: Path, second: Path, space) -> dict:
    rows = {}
    for drift in ("none", "anchor"):
        a, b = per_subnet(first, space, drift), per_subnet(second, space, drift)
        va, vb = (relative(d) if drift == "anchor" else dict(zip((c.id for c in d.configs), d.y)) for d in (a, b))
        common = sorted(set(va) & set(vb))
        ratio = np.array([va[i] / vb[i] for i in common])
        rows[drift] = {"subnets": len(common), "within_10_pct": within(ratio, np.ones_like(ratio)),
                       "median_abs_diff_pct": float(100 * np.median(np.abs(ratio - 1)))}  # fmt: skip
    return rows


def prediction(train: Path, test: Path, space, model: str) -> dict:
    rows = {}
    for drift in ("none", "anchor"):
        result = fit(train, METRIC, FitSettings(drift=drift, learning_curve=False), space=space, model=model)
        data = per_subnet(test, space, drift)
        predicted = result.predictor.predict(data.configs)
        measured = data.y
        if drift == "anchor":  # both sides over their own anchor: the prediction through train's scale
            predicted = predicted / result.predictor.metadata_["drift_corrected_by"]["scale"]
            measured = measured / data.anchor["scale"]
        error = 100 * (predicted / measured - 1)
        rows[drift] = {"subnets": len(measured), "within_10_pct": within(predicted, measured),
                       "mape_pct": float(np.mean(np.abs(error))), "median_error_pct": float(np.median(error))}  # fmt: skip
    return rows


def show(report: dict) -> None:
    runs = [[name, f["records"], f["anchors"], f["anchor_range_pct"], f["anchor_cost_pct"], f["loaded"], f["wall_s"]]
            for name, f in report["runs"].items()]  # fmt: skip
    print(table(runs, ["run", "records", "anchors", "anchor range %", "anchor cost %", "loaded", "wall s"]))
    print("\nthe same unseen sub-networks, two runs (test-1 / test-2):")
    rows = [[k, v["subnets"], f"{v['within_10_pct']:.0f}", f"{v['median_abs_diff_pct']:.1f}"]
            for k, v in report["agreement"].items()]  # fmt: skip
    print(table(rows, ["drift correction", "sub-networks", "within ±10 % (%)", "median |diff| %"]))
    print("\na predictor fitted on train, judged on test-2:")
    rows = [[k, v["subnets"], f"{v['within_10_pct']:.0f}", f"{v['mape_pct']:.1f}", f"{v['median_error_pct']:+.1f}"]
            for k, v in report["prediction"].items()]  # fmt: skip
    print(table(rows, ["drift correction", "sub-networks", "within ±10 % (%)", "MAPE %", "median error %"]))


if __name__ == "__main__":
    main()
