"""`fit(profile, metric, FitSettings(...))`: split, fit, compare with the baselines, learning curve.

The predictor returned is the one fitted on the training split only, so the held-out figures
stored in its metadata are the figures of the file that is saved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..concepts import metric as metric_named
from ..errors import BadInputError
from ..progress import Callback, report
from ..space import SearchSpace, load_space
from .compare import baselines, compare, learning_curve, learning_curve_plan, plot_predictions, split_indices
from .dataset import ProfileData, load_profile_data, resolve_shape
from .estimator import LatencyPredictor
from .features import FeatureBuilder

if TYPE_CHECKING:
    from ..model.supernet import SuperNetwork


@dataclass(frozen=True)
class FitSettings:
    """The held-out split (fraction, seed; the seed is XGBoost's too) and whether to draw the learning curve."""

    test_fraction: float = 0.2
    seed: int = 0
    learning_curve: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.test_fraction, (int, float)) or not 0.05 <= self.test_fraction <= 0.5:
            raise BadInputError(f"must be between 0.05 and 0.5, got {self.test_fraction!r}", param="test_fraction")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise BadInputError(f"must be an integer, got {self.seed!r}", param="seed")
        if not isinstance(self.learning_curve, bool):
            raise BadInputError(f"must be True or False, got {self.learning_curve!r}", param="learning_curve")


@dataclass
class FitResult:
    """The fitted predictor (training split only), every model's held-out figures, the learning curve."""

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

    def plot(self, path: str | Path) -> Path:
        """A PNG of predicted vs measured on the held-out split."""
        d = self.data_summary
        title = f"{d['target']} {d['setting']['backend']} {d['setting']['precision']}: {self.predictor.metadata_['metric']}"
        plot_predictions(self.y_test, self.pred_test, str(path), title, d["unit"])
        return Path(path)


def fit(
    profile: ProfileData | str | Path,
    metric: str = "decode_ms",
    settings: FitSettings = FitSettings(),
    *,
    space: SearchSpace | str | Path | None = None,
    model: "SuperNetwork | str | Path | None" = None,
    backend: str | None = None,
    precision: str | None = None,
    callback: Callback = None,
) -> FitResult:
    """Fit an XGBoost predictor of `metric` on a profile directory (or its loaded `ProfileData`).

    `space`, `backend` and `precision` choose among what the directory holds (default: its one
    built-in space, its one setting); `model` is the super-network it measured (default: the
    built-in model it names). Every model is scored on the same held-out split.
    """
    data = _profile_data(profile, metric, space, backend, precision)
    shape = resolve_shape(data, model)
    estimator = LatencyPredictor(FeatureBuilder(data.space, shape, data.setting["shapes"]), data.metric,
                                 random_state=settings.seed)  # fmt: skip
    report(callback, "fit", message=f"fitting {data.metric} on {len(data.y)} sub-networks of {data.target} "
                                    f"({data.n_flagged} flagged visits dropped)")  # fmt: skip
    train, test = split_indices(len(data.y), settings.test_fraction, settings.seed)
    total = 1 + len(baselines()) + (sum(d for _, d in learning_curve_plan(len(train))) if settings.learning_curve else 0)
    done = iter(range(1, total + 1))

    def step(name: Any) -> None:
        report(callback, "fit", next(done) - 1, total, "model", status=str(name))

    ours, rows, pred = compare(estimator, data.configs, data.y, train, test, settings.seed, step, data.provenance())
    curve = learning_curve(estimator, data.configs, data.y, train, test, step) if settings.learning_curve else []
    report(callback, "fit", total, total, "model")
    ours.metadata_.update(
        n_test=len(test),
        test_metrics={k: v for k, v in rows[0].items() if k != "model"},
        baselines_test_mape_pct={r["model"]: r["mape_pct"] for r in rows[1:]},
        learning_curve_mape_pct={str(r["n_train"]): r["mape_pct"] for r in curve},
        split={"test_fraction": settings.test_fraction, "seed": settings.seed},
    )
    return FitResult(ours, rows, curve, data.y[test], pred, _summary(data, len(train), len(test)))


def _profile_data(profile, metric: str, space, backend: str | None, precision: str | None) -> ProfileData:
    if not isinstance(profile, ProfileData):
        space = load_space(space) if isinstance(space, (str, Path)) else space
        return load_profile_data(profile, metric, space, backend, precision)
    if profile.metric != metric_named(metric).name:
        raise BadInputError(f"{metric!r}, but the profile data given hold {profile.metric!r}", param="metric")
    return profile


def _summary(data: ProfileData, n_train: int, n_test: int) -> dict[str, Any]:
    return {
        "profile": str(data.path),
        "target": data.target,
        "setting": data.setting,
        "n_records": data.n_records,
        "n_flagged_dropped": data.n_flagged,
        "n_subnets": len(data.y),
        "n_train": n_train,
        "n_test": n_test,
        "unit": metric_named(data.metric).unit,
    }
