"""How few measurements a new device (or a new format on the same device) needs: predictor transfer.

For each source -> target pair of the shipped profiles, and each k target sub-networks
(3, 5, 10, 20, 40), four predictors are scored on the same held-out target sub-networks:

- transfer: `fit(..., transfer_from=source)` (affine prior on the source's prediction + XGBoost correction);
- scratch: the same estimator fitted on the same k target sub-networks without a source;
- rescale-1: the source's predictions times measured / predicted of one measured sub-network (the first of the k);
  orders of the k: the plan's first k; the plan's k after its first two (smallest and largest); random draws;
- as-is: the source unchanged (does not depend on k).

Held-out split: a seeded 20 % of the target's sub-networks, drawn from those the profile plan measured
after its first 40, so that every k can also be the plan's first k (`order` "plan": smallest and
largest first, then strata over depth x width, as `llamanas profile --samples K` measures them);
`order` "random": several random draws of k from the same pool. The source predictor is fitted on all
of the source profile's sub-networks (another device measured them: knowledge a new device gets for
free). Also printed: the target's own predictor fitted on the whole pool (the ceiling its measurement
noise leaves) and how well two halves of each held-out sub-network's visits agree.

    python benchmarks/predictor_transfer.py [--draws 5] [--ks 3 5 10 20 40] [--json FILE]

Pairs (all decode_ms, batch 1, 128 cached tokens, 1 thread, cpu clock):
  Xeon torch fp32 -> EPYC torch fp32; EPYC -> Xeon; Xeon torch fp32 -> Xeon onnxruntime int8; and
  "EPYC, visits 1-2": the EPYC profile without its first pass, during which the host ran ~30 % faster
  for its first ~20 sub-networks (see hardware_profiles/amd-epyc-2c/README.md).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from llamanas_deploy.cli.common import table
from llamanas_deploy.predict import FeatureBuilder, LatencyPredictor, load_profile_data
from llamanas_deploy.predict.compare import regression_metrics
from llamanas_deploy.predict.dataset import ProfileData, resolve_shape
from llamanas_deploy.predict.estimator import TransferSource

ROOT = Path(__file__).resolve().parent.parent
XEON = ROOT / "hardware_profiles" / "dev-cpu-2c-avx512-amx"
EPYC = ROOT / "hardware_profiles" / "amd-epyc-2c"
METRIC = "decode_ms"
SHOWN = ("within_5_pct", "within_10_pct", "mape_pct", "spearman")
METHODS = ("transfer", "scratch", "rescale-1", "as-is")
ORDERS = ("plan", "plan, extremes last", "random")
PLAN_PREFIX = 40
GOAL_K, GOAL_WITHIN_10 = 10, 95.0


def without_first_visit(profile: Path, work: Path) -> Path:
    """A copy of the profile without the records of visit 0."""
    out = work / f"{profile.name}-visits-1-2"
    out.mkdir()
    shutil.copy(profile / "fingerprint.json", out / "fingerprint.json")
    lines = [line for line in (profile / "measurements.jsonl").read_text().splitlines() if json.loads(line).get("visit", 0) > 0]
    (out / "measurements.jsonl").write_text("\n".join(lines) + "\n")
    return out


def features_of(data: ProfileData) -> FeatureBuilder:
    return FeatureBuilder(data.space, resolve_shape(data, None), data.setting["shapes"])


def held_out_split(n: int, seed: int, fraction: float = 0.2, at_least: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(pool in measuring order, held out): the held-out rows, 20 % of the profile but at least 20, come
    from plan positions >= PLAN_PREFIX."""
    late = np.arange(PLAN_PREFIX, n)
    n_test = max(at_least, int(round(n * fraction)))
    test = np.sort(np.random.default_rng(seed).choice(late, size=min(n_test, len(late)), replace=False))
    return np.setdiff1d(np.arange(n), test), test


def half_agreement(visits: list[list[float]]) -> float:
    """% of sub-networks (>= 2 visits) whose even and odd visits' fast ends agree within +-10 %."""
    pairs = [min(v[::2]) / min(v[1::2]) - 1 for v in visits if len(v) >= 2]
    return float(np.mean(np.abs(pairs) <= 0.10) * 100)


def evaluate_pair(name: str, source: ProfileData, target: ProfileData, ks: list[int], draws: int, seed: int) -> dict:
    src = LatencyPredictor(features_of(source), METRIC, random_state=seed).fit(source.configs, source.y, source.provenance())
    src.source_ = f"{source.target}-{source.setting['backend']}-{source.setting['precision']}"
    transfer_source = TransferSource.of(src)
    features = features_of(target)
    configs, y = target.configs, target.y
    pool, test = held_out_split(len(y), seed)
    test_configs = [configs[i] for i in test]
    source_test = src.predict(test_configs)
    source_all = src.predict(configs)
    as_is = regression_metrics(y[test], source_test)
    rows = []
    for k in ks:
        if k > len(pool):
            continue
        for order in ORDERS:
            picks = [pool[:k]] if order == "plan" else [pool[2 : k + 2]] if order == "plan, extremes last" else [
                np.random.default_rng(seed + 1000 + d).choice(pool, size=k, replace=False) for d in range(draws)
            ]  # fmt: skip
            scores = {m: [] for m in METHODS}
            for rows_k in picks:
                fit_configs = [configs[i] for i in rows_k]
                transfer = LatencyPredictor(features, METRIC, random_state=seed, transfer_from=transfer_source)
                scores["transfer"].append(regression_metrics(y[test], transfer.fit(fit_configs, y[rows_k]).predict(test_configs)))
                if k >= 3:
                    scratch = LatencyPredictor(features, METRIC, random_state=seed).fit(fit_configs, y[rows_k])
                    scores["scratch"].append(regression_metrics(y[test], scratch.predict(test_configs)))
                anchor = rows_k[0]
                scores["rescale-1"].append(regression_metrics(y[test], source_test * (y[anchor] / source_all[anchor])))
                scores["as-is"].append(as_is)
            for method, s in scores.items():
                if s:
                    mean = {key: float(np.nanmean([d[key] for d in s])) for key in SHOWN}  # rho: nan for a constant prediction
                    low = float(np.min([d["within_10_pct"] for d in s]))
                    rows.append({"k": k, "order": order, "method": method, "draws": len(s), **mean, "within_10_pct_min": low})
    ceiling = LatencyPredictor(features, METRIC, random_state=seed).fit([configs[i] for i in pool], y[pool])
    return {
        "pair": name,
        "source": {"target": source.target, **{k: source.setting[k] for k in ("backend", "precision")}, "n": len(source.y)},
        "target": {"target": target.target, **{k: target.setting[k] for k in ("backend", "precision")}, "n": len(y),
                   "profile": str(target.path)},  # fmt: skip
        "n_pool": len(pool),
        "n_test": len(test),
        "rows": rows,
        "ceiling_own_predictor_on_pool": regression_metrics(y[test], ceiling.predict(test_configs)),
        "held_out_half_agreement_within_10_pct": half_agreement([target.visits[i] for i in test]),
    }


def cells(r: dict) -> list[str]:
    return [f"{r['within_5_pct']:.1f}", f"{r['within_10_pct']:.1f}", f"{r['mape_pct']:.2f}", f"{r['spearman']:.3f}"]


def render(result: dict, order: str) -> str:
    by = {(r["k"], r["order"], r["method"]): r for r in result["rows"]}
    ks = sorted({r["k"] for r in result["rows"]})
    lines = []
    for k in ks:
        row = [k]
        for method in METHODS:
            r = by.get((k, order, method))
            row.append(f"{r['within_10_pct']:.1f} / {r['mape_pct']:.1f} / {r['spearman']:.3f}" if r else "")
        t = by[(k, order, "transfer")]
        row.append(f"{t['within_5_pct']:.1f}")
        row.append(f"{t['within_10_pct_min']:.1f}")
        lines.append(row)
    return table(lines, ["k", *[f"{m}: ±10% / MAPE / rho" for m in METHODS], "transfer ±5%", "transfer min ±10%"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=5, help="random draws of k per size")
    parser.add_argument("--ks", type=int, nargs="+", default=[3, 5, 10, 20, 40])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", default=None, help="also write every row to this JSON file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        xeon = load_profile_data(XEON, METRIC, backend="torch", precision="fp32")
        epyc = load_profile_data(EPYC, METRIC, backend="torch", precision="fp32")
        epyc_late = load_profile_data(without_first_visit(EPYC, Path(work)), METRIC, backend="torch", precision="fp32")
        xeon_int8 = load_profile_data(XEON, METRIC, backend="onnxruntime", precision="int8")
        pairs = [
            ("Xeon -> EPYC (torch fp32)", xeon, epyc),
            ("Xeon -> EPYC, visits 1-2 (torch fp32)", xeon, epyc_late),
            ("EPYC -> Xeon (torch fp32)", epyc, xeon),
            ("Xeon torch fp32 -> Xeon onnxruntime int8", xeon, xeon_int8),
        ]
        results = [evaluate_pair(name, s, t, args.ks, args.draws, args.seed) for name, s, t in pairs]
    out = []
    for r in results:
        ceiling = r["ceiling_own_predictor_on_pool"]
        out += [
            f"== {r['pair']}: source {r['source']['n']} sub-networks; target {r['target']['n']}: "
            f"{r['n_pool']} in the pool, {r['n_test']} held out",
            f"   target's own predictor on the whole pool ({r['n_pool']}): {ceiling['within_10_pct']:.1f} % within ±10 %, "
            f"MAPE {ceiling['mape_pct']:.2f} %, rho {ceiling['spearman']:.3f}; held-out sub-networks whose even and odd "
            f"visits agree within ±10 %: {r['held_out_half_agreement_within_10_pct']:.1f} %",
        ]
        for order in ORDERS:
            label = {"plan": "the profile plan's first k (smallest, largest, then strata)",
                     "plan, extremes last": "the plan's k after its first two (the smallest and largest come later)",
                     "random": f"k drawn at random, mean of {args.draws} draws"}[order]  # fmt: skip
            out += [f"   {label}:", render(r, order), ""]
    goal = []
    for r in results:
        t = next((x for x in r["rows"] if x["k"] == GOAL_K and x["order"] == "plan" and x["method"] == "transfer"), None)
        tr = next((x for x in r["rows"] if x["k"] == GOAL_K and x["order"] == "random" and x["method"] == "transfer"), None)
        if t and tr:
            short = GOAL_WITHIN_10 - t["within_10_pct"]
            verdict = "MET" if short <= 0 else f"NOT MET ({short:.1f} points short)"
            goal.append(f"{r['pair']}: transfer, k={GOAL_K}: {t['within_10_pct']:.1f} % within ±10 % (plan order), "
                        f"{tr['within_10_pct']:.1f} % (random draws) -> goal >= {GOAL_WITHIN_10:.0f} %: {verdict}")  # fmt: skip
    out += ["goal:", *goal, f"({time.perf_counter() - started:.0f} s)"]
    print("\n".join(out))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
