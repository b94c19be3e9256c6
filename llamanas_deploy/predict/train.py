"""`fit(profile, metric, FitSettings(...))`: split, fit, compare with the baselines, learning curve.

The predictor returned is the one fitted on the training split only, so the held-out figures
stored in its metadata are the figures of the file that is saved.

With `transfer_from` (another device's predictor of the same backend, or this device's predictor
of another backend / precision, or a profile to fit one on; see transfer.py), the source's
prediction is the prior and the target's few measurements fit the rest; the comparison then also
holds the same estimator fitted from scratch on the same rows, the source rescaled by one measured
sub-network and the source as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..concepts import check_choice
from ..concepts import metric as metric_named
from ..errors import BadInputError
from ..progress import Callback, report
from ..space import SearchSpace, load_space
from .compare import baselines, compare, learning_curve, learning_curve_plan, plot_predictions, split_indices
from .dataset import DRIFT_CORRECTIONS, MIN_SUBNETS, ProfileData, load_profile_data, resolve_model
from .estimator import LatencyPredictor
from .features import FeatureBuilder
from .remeasure import remeasure
from .transfer import MIN_TRANSFER_SUBNETS, kind_of, resolve_source, transfer_rows

if TYPE_CHECKING:
    from ..model.supernet import SuperNetwork


@dataclass(frozen=True)
class FitSettings:
    """The held-out split (fraction, seed; the seed is XGBoost's too), whether to draw the learning curve,
    and `train_samples`: fit on only the first K sub-networks of the training split in measuring order
    (the profile plan's order: smallest and largest first), as a device profiled with K would."""

    test_fraction: float = 0.2
    seed: int = 0
    learning_curve: bool = True
    train_samples: int | None = None
    drift: str = "anchor"  # "anchor": timings corrected by the profile's anchor measurements (`predict.dataset`)
    remeasure: bool = False  # measure the held-out sub-networks again (`predict.remeasure`)

    def __post_init__(self) -> None:
        check_choice(self.drift, DRIFT_CORRECTIONS, "drift")
        if not isinstance(self.remeasure, bool):
            raise BadInputError(f"must be True or False, got {self.remeasure!r}", param="remeasure")
        if not isinstance(self.test_fraction, (int, float)) or not 0.05 <= self.test_fraction <= 0.5:
            raise BadInputError(f"must be between 0.05 and 0.5, got {self.test_fraction!r}", param="test_fraction")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise BadInputError(f"must be an integer, got {self.seed!r}", param="seed")
        if not isinstance(self.learning_curve, bool):
            raise BadInputError(f"must be True or False, got {self.learning_curve!r}", param="learning_curve")
        if self.train_samples is not None and (
            not isinstance(self.train_samples, int) or isinstance(self.train_samples, bool) or self.train_samples < 2
        ):
            raise BadInputError(f"must be an integer >= 2 or None, got {self.train_samples!r}", param="train_samples")


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
    supernet: "SuperNetwork | str | Path | None" = None,
    space: SearchSpace | str | Path | None = None,
    backend: str | None = None,
    precision: str | None = None,
    transfer_from: Any = None,
    callback: Callback = None,
) -> FitResult:
    """Fit an XGBoost predictor of `metric` on a profile directory (or its loaded `ProfileData`).

    `space`, `backend` and `precision` choose among what the directory holds (default: its one
    built-in space, its one setting); `supernet` is the super-network it measured (default: the
    built-in model it names). Every model is scored on the same held-out split. `transfer_from`:
    a source predictor (object, file, shipped name) or a profile directory to transfer from.
    """
    minimum = MIN_SUBNETS if transfer_from is None else MIN_TRANSFER_SUBNETS
    data = _profile_data(profile, metric, space, backend, precision, minimum, settings.drift)
    measured_model, shape = resolve_model(data, supernet)
    features = FeatureBuilder(data.space, shape, data.setting["shapes"])
    source = None if transfer_from is None else resolve_source(transfer_from, data, features, settings.seed)
    estimator = LatencyPredictor(features, data.metric, random_state=settings.seed, transfer_from=source)
    train, test = split_indices(len(data.y), settings.test_fraction, settings.seed)
    if settings.train_samples is not None:
        train = train[: settings.train_samples]
    via = "" if source is None else f" with transfer from {source.reference['name']}"
    used = "" if settings.train_samples is None else f" ({len(train)} of them to fit, {len(test)} held out)"
    report(callback, "fit", message=f"fitting {data.metric} on {len(data.y)} sub-networks of {data.target}{used}{via} "
                                    f"({data.n_flagged} flagged visits dropped)")  # fmt: skip
    with_baselines = source is None or len(train) >= MIN_SUBNETS
    plan = learning_curve_plan(len(train), small=source is not None) if settings.learning_curve else []
    total = 1 + (len(baselines()) if with_baselines else 0) + (3 if source else 0) + sum(d for _, d in plan)
    done = iter(range(1, total + 1))

    def step(name: Any) -> None:
        report(callback, "fit", min(next(done), total) - 1, total, "model", status=str(name))

    ours, rows, pred = compare(estimator, data.configs, data.y, train, test, settings.seed, step, data.provenance(),
                               with_baselines=with_baselines)  # fmt: skip
    if source is not None:
        step("transfer alternatives")
        scratch = LatencyPredictor(features, data.metric, random_state=settings.seed)
        rows[1:1] = transfer_rows(source, scratch, data.configs, data.y, train, test)
        ours.metadata_["transfer"]["kind"] = kind_of(source, data)
    curve = learning_curve(estimator, data.configs, data.y, train, test, step, plan) if plan else []
    report(callback, "fit", total, total, "model")
    ours.metadata_.update(
        n_test=len(test),
        test_metrics={k: v for k, v in rows[0].items() if k != "model"},
        baselines_test_mape_pct={r["model"]: r["mape_pct"] for r in rows[1:]},
        learning_curve_mape_pct={str(r["n_train"]): r["mape_pct"] for r in curve},
        split={"test_fraction": settings.test_fraction, "seed": settings.seed,
               **({"train_samples": settings.train_samples} if settings.train_samples is not None else {})},
    )
    summary = _summary(data, len(train), len(test))
    if source is not None:
        summary["transfer"] = ours.metadata_["transfer"]
    if settings.remeasure:
        again = remeasure(data, [data.configs[i] for i in test], data.y[test], pred, measured_model, callback)
        summary["remeasured"] = ours.metadata_["remeasured"] = again.to_dict()
    return FitResult(ours, rows, curve, data.y[test], pred, summary)


def _profile_data(profile, metric: str, space, backend: str | None, precision: str | None, minimum: int,
                  drift: str) -> ProfileData:  # fmt: skip
    if not isinstance(profile, ProfileData):
        space = load_space(space) if isinstance(space, (str, Path)) else space
        return load_profile_data(profile, metric, space, backend, precision, min_subnets=minimum, drift=drift)
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
        "n_loaded": data.n_loaded,
        "drift_corrected_by": data.anchor,
        "n_subnets": len(data.y),
        "n_train": n_train,
        "n_test": n_test,
        "unit": metric_named(data.metric).unit,
    }
