"""Honest error figures: one held-out split, XGBoost against the anchors' predictors, a learning curve.

Every model sees the same training rows and is scored on the same held-out rows, which no model
(and no hyper-parameter search) ever sees during fitting. Baselines get the same features as
XGBoost, except the params-only linear fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..jsonfiles import save_figure
from ..subnet_config import SubnetConfig
from .estimator import DEFAULT_GRID, LatencyPredictor

METRIC_NAMES = ("mape_pct", "rmse", "within_5_pct", "within_10_pct", "spearman", "kendall")
OURS = "xgboost + per-layer prior (ours)"
OURS_TRANSFER = "xgboost + source prior (transfer, ours)"


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) row indices: a seeded shuffle, at least 2 rows on each side."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = min(max(2, int(round(n * test_fraction))), n - 2)
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    from scipy.stats import kendalltau, spearmanr

    rel = np.abs(y_pred / y_true - 1)
    return {
        "mape_pct": float(rel.mean() * 100),
        "rmse": float(np.sqrt(np.mean((y_pred - y_true) ** 2))),
        "within_5_pct": float((rel <= 0.05).mean() * 100),
        "within_10_pct": float((rel <= 0.10).mean() * 100),
        "spearman": float(spearmanr(y_true, y_pred).statistic),
        "kendall": float(kendalltau(y_true, y_pred).statistic),
    }


@dataclass(frozen=True)
class Baseline:
    name: str
    make: Callable[[int], Any]  # seed -> unfitted scikit-learn regressor
    columns: tuple[str, ...] | None = None  # None: every feature


def baselines() -> list[Baseline]:
    return [
        Baseline("xgboost, no prior (ablation)", _plain_xgboost),
        Baseline("linear on params", lambda seed: _linear(), ("params",)),
        Baseline("ridge (DyNAS-T)", lambda seed: _ridge()),
        Baseline("svr (DyNAS-T)", lambda seed: _svr()),
        Baseline("random forest (nn-Meter, Vidur)", _forest),
    ]


def _linear():
    from sklearn.linear_model import LinearRegression

    return LinearRegression()


def _ridge():
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-4, 3, 15)))


def _svr():
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVR

    grid = {"svr__C": [1.0, 10.0, 100.0, 1000.0], "svr__gamma": ["scale", 0.01]}
    # scored by MAE, which one held-out sample defines (the default R^2 warns UndefinedMetricWarning on small folds)
    search = GridSearchCV(make_pipeline(StandardScaler(), SVR(epsilon=0.01)), grid, cv=_cv(), scoring="neg_mean_absolute_error")
    return TransformedTargetRegressor(search, transformer=StandardScaler())


def _forest(seed: int):
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=300, random_state=seed, n_jobs=1)


def _plain_xgboost(seed: int):
    from sklearn.model_selection import GridSearchCV
    from xgboost import XGBRegressor

    model = XGBRegressor(
        objective="reg:absoluteerror", learning_rate=0.1, subsample=0.8, colsample_bytree=0.8, random_state=seed, n_jobs=1
    )
    grid = {"max_depth": list(DEFAULT_GRID["max_depth"]), "n_estimators": list(DEFAULT_GRID["num_boost_round"])}
    return GridSearchCV(model, grid, cv=_cv(), scoring="neg_mean_absolute_percentage_error")


def _cv():
    from sklearn.model_selection import KFold

    return KFold(5, shuffle=True, random_state=0)


def compare(
    estimator: LatencyPredictor,
    configs: Sequence[SubnetConfig],
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    seed: int = 0,
    progress: Callable[[str], None] = lambda name: None,
    provenance: dict[str, Any] | None = None,
    with_baselines: bool = True,
) -> tuple[LatencyPredictor, list[dict[str, Any]], np.ndarray]:
    """(a clone of `estimator` fitted on `train`, one metrics row per model on `test`, its test predictions)."""
    from sklearn.base import clone

    progress(OURS_TRANSFER if estimator.transfer_from is not None else OURS)
    ours = clone(estimator).fit([configs[i] for i in train], y[train], provenance=provenance)
    ours_pred = ours.predict([configs[i] for i in test])
    rows = [{"model": OURS_TRANSFER if estimator.transfer_from is not None else OURS, **regression_metrics(y[test], ours_pred)}]
    if not with_baselines:
        return ours, rows, ours_pred
    X = ours.features.transform(configs)
    names = ours.features.names
    for baseline in baselines():
        progress(baseline.name)
        cols = [names.index(c) for c in baseline.columns] if baseline.columns else slice(None)
        model = baseline.make(seed).fit(X[train][:, cols], y[train])
        rows.append({"model": baseline.name, **regression_metrics(y[test], model.predict(X[test][:, cols]))})
    return ours, rows, ours_pred


def learning_curve_plan(n_train: int, repeats: int = 3, repeat_up_to: int = 50, small: bool = False) -> list[tuple[int, int]]:
    """(n, draws): n = 10, 20, 50, 100, 200, 500, ... below `n_train`, then `n_train` itself
    (`small`, for a transfer: 3, 5, 10, 20, 40, 100, ...).

    Small n, where one draw says little, gets `repeats` draws; above `repeat_up_to` one draw.
    """
    steps = [3, 5, 10, 20, 40] + [m * 10**k for k in range(2, 7) for m in (1, 2, 5)] if small else \
        [m * 10**k for k in range(1, 7) for m in (1, 2, 5)]  # fmt: skip
    sizes = [s for s in steps if s < n_train] + [n_train]
    return [(n, repeats if n <= repeat_up_to and n < n_train else 1) for n in sizes]


def learning_curve(
    estimator: LatencyPredictor,
    configs: Sequence[SubnetConfig],
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    progress: Callable[[int], None] = lambda n: None,
    plan: list[tuple[int, int]] | None = None,
) -> list[dict[str, Any]]:
    """Our metrics on `test` when fitting clones of `estimator` on n random training rows, averaged over
    draws (`plan`, default `learning_curve_plan`)."""
    from sklearn.base import clone

    test_configs = [configs[i] for i in test]
    rows = []
    for n, draws in plan or learning_curve_plan(len(train)):
        scores = []
        for r in range(draws):
            progress(n)
            rows_n = train if n == len(train) else np.random.default_rng(r).choice(train, size=n, replace=False)
            model = clone(estimator).fit([configs[i] for i in rows_n], y[rows_n])
            scores.append(regression_metrics(y[test], model.predict(test_configs)))
        rows.append({"n_train": n, "draws": draws, **{k: float(np.mean([s[k] for s in scores])) for k in METRIC_NAMES}})
    return rows


def plot_predictions(y_true: np.ndarray, y_pred: np.ndarray, path: str, title: str, unit: str) -> None:
    """Predicted vs measured on the held-out split, with the +-10% band around the diagonal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low, high = float(min(y_true.min(), y_pred.min())) * 0.95, float(max(y_true.max(), y_pred.max())) * 1.05
    line = np.linspace(low, high, 100)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.fill_between(line, line * 0.9, line * 1.1, color="tab:green", alpha=0.15, label="±10%")
    ax.plot(line, line, color="tab:green", lw=1)
    ax.scatter(y_true, y_pred, s=14, color="tab:blue", label="held-out sub-networks")
    within = float((np.abs(y_pred / y_true - 1) <= 0.1).mean() * 100)
    ax.set(xlim=(low, high), ylim=(low, high), xlabel=f"measured ({unit})", ylabel=f"predicted ({unit})")
    ax.set_title(f"{title}\n{within:.1f}% of {len(y_true)} within ±10%", fontsize=10)
    ax.legend(loc="upper left")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
