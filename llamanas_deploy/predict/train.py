"""Fit a predictor on a profile: split, fit, compare with the baselines, learning curve.

The predictor returned is the one fitted on the training split only, so the held-out figures
stored in its metadata are the figures of the file that is saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..model.families import ModelShape
from .compare import baselines, compare, learning_curve, learning_curve_plan, split_indices
from .dataset import ProfileData
from .estimator import METRICS, LatencyPredictor
from .features import FeatureBuilder


@dataclass
class FitResult:
    predictor: LatencyPredictor
    comparison: list[dict[str, Any]]
    learning_curve: list[dict[str, Any]]
    y_test: np.ndarray
    pred_test: np.ndarray
    data_summary: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metadata": self.predictor.metadata_,
            "data": self.data_summary,
            "comparison": self.comparison,
            "learning_curve": self.learning_curve,
        }


def fit_profile(
    data: ProfileData,
    shape: ModelShape,
    metric: str,
    test_fraction: float = 0.2,
    seed: int = 0,
    with_curve: bool = True,
    show_progress: bool = True,
) -> FitResult:
    from tqdm.auto import tqdm

    features = FeatureBuilder(data.space, shape, data.setting["shapes"])

    def make() -> LatencyPredictor:
        return LatencyPredictor(features, metric, random_state=seed, provenance=data.provenance())

    train, test = split_indices(len(data.y), test_fraction, seed)
    fits = 1 + len(baselines()) + (sum(d for _, d in learning_curve_plan(len(train))) if with_curve else 0)
    bar = tqdm(total=fits, desc=f"fit {metric}", unit="model", disable=not show_progress, leave=False)
    with bar:
        ours, rows, pred = compare(make, data.configs, data.y, train, test, seed, lambda name: bar.update())
        curve = (
            learning_curve(make, data.configs, data.y, train, test, progress=lambda n: bar.update())
            if with_curve
            else []
        )
    ours.metadata_.update(
        n_test=len(test),
        test_metrics={k: v for k, v in rows[0].items() if k != "model"},
        baselines_test_mape_pct={r["model"]: r["mape_pct"] for r in rows[1:]},
        learning_curve_mape_pct={str(r["n_train"]): r["mape_pct"] for r in curve},
        split={"test_fraction": test_fraction, "seed": seed},
    )
    summary = {
        "profile": str(data.path),
        "target": data.target,
        "setting": data.setting,
        "n_records": data.n_records,
        "n_flagged_dropped": data.n_flagged,
        "n_subnets": len(data.y),
        "n_train": len(train),
        "n_test": len(test),
        "unit": METRICS[metric][0],
    }
    return FitResult(ours, rows, curve, data.y[test], pred, summary)
