"""`LatencyPredictor`: a physics prior times an XGBoost correction, scikit-learn style.

The model, for a cost-like figure `c` (latency, memory; throughput is turned into its inverse):

    c(subnet) = prior(subnet) * exp(xgboost(features(subnet)))
    prior     = t_0 + sum over widths w of (layers of width w) * t_w      (t >= 0)

The prior is a per-layer cost table fitted by non-negative least absolute relative error; the
trees learn what it misses (interactions, cache effects) as a log-ratio, with an absolute-error
objective (the figure reported is MAPE, and busy-machine outliers should not pull), so a few trees on few
samples already give the right scale, and predictions never fall off a cliff outside the widths
seen together in training. Hyper-parameters (tree depth, number of rounds) are chosen by k-fold
cross-validation of the whole pipeline on the data given to `fit`.

A scikit-learn estimator: parameters in `__init__` only (`get_params` / `set_params` /
`sklearn.base.clone` work), fitted state in attributes ending in `_`. Where the training data
came from is given to `fit(configs, y, provenance=...)` and kept in `metadata_`, with the time
of the fit and the library versions.

Transfer (`transfer_from=TransferSource(...)`): the prior is another fitted predictor of the same
figure, space and shapes (another device, or another backend / precision on the same device),
taken as an affine function of its prediction,

    prior = a + b * source(subnet)                                        (a, b >= 0)

fitted like the per-layer table, and the trees learn only what the source's shape misses; zero
trees is one of the cross-validated choices, so a handful of target measurements give a
scale-and-offset copy of the source and more of them add a correction. `benchmarks/
predictor_transfer.py` chose this form (against a pure scale, the source rescaled by one
sub-network, and fitting from scratch).

Saved as one JSON file (`predictor_file.py`: the format, its reading and its checks); a transferred
predictor embeds its source's file and records it by name and sha256 in `metadata["transfer"]`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin

from .. import __version__
from ..concepts import metric
from ..errors import BadInputError, LlamanasError
from ..space import SearchSpace
from ..subnet_config import SubnetConfig
from . import predictor_file
from .features import FEATURE_SCHEMA_VERSION, FeatureBuilder
from .predictor_file import TUNED_HYPERPARAMETERS, PredictorFile

DEFAULT_GRID = {"max_depth": (2, 4), "num_boost_round": (10, 30, 100, 300)}
TRANSFER_GRID = {"max_depth": (1, 2), "num_boost_round": (0, 10, 30, 100)}  # 0: the affine prior alone


class NotFittedError(LlamanasError):
    """A predictor was used before `fit` or `load`."""


@dataclass(frozen=True, eq=False)
class TransferSource:
    """A fitted predictor used as the prior of another one, with what identifies it (`reference`:
    name, path, sha256, target, fingerprint_id, backend, precision, n_train, ...).

    Not an estimator itself, so `sklearn.base.clone` of the predictor that holds it copies it fitted.
    """

    predictor: "LatencyPredictor"
    reference: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, predictor: "LatencyPredictor", **reference: Any) -> "TransferSource":
        """Wrap a fitted predictor; its file's sha256 and where it was measured go into `reference`."""
        predictor._check_fitted()
        meta = predictor.metadata_
        keys = ("target", "fingerprint_id", "backend", "precision", "device", "threads", "clock", "metric", "n_train")
        where = predictor.source
        name = Path(where).stem if where.endswith(".json") else where
        return cls(predictor, {"name": name, "path": where, "sha256": predictor.to_dict()["sha256"],
                               **{k: meta.get(k) for k in keys}, **reference})  # fmt: skip


class LatencyPredictor(RegressorMixin, BaseEstimator):
    """Predicts one hardware figure (`metric`, a name in `concepts.METRICS`) of sub-networks of one
    space on one target."""

    def __init__(
        self,
        features: FeatureBuilder,
        metric: str = "decode_ms",
        param_grid: dict[str, Sequence[int]] | None = None,
        cv_folds: int = 5,
        learning_rate: float = 0.1,
        objective: str = "reg:absoluteerror",
        random_state: int = 0,
        n_jobs: int = 1,
        transfer_from: TransferSource | None = None,
    ):
        self.features = features
        self.metric = metric
        self.param_grid = param_grid
        self.cv_folds = cv_folds
        self.learning_rate = learning_rate
        self.objective = objective
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.transfer_from = transfer_from

    # ---- fitting ------------------------------------------------------------------------------
    def fit(
        self, configs: Sequence[SubnetConfig], y: Sequence[float], provenance: dict[str, Any] | None = None
    ) -> "LatencyPredictor":
        """Fit on measured `y` of `configs`; `provenance` (target, fingerprint, backend, ...) goes into `metadata_`."""
        metric(self.metric)
        y = np.asarray(y, dtype=np.float64)
        if len(configs) != len(y) or len(y) < 2:
            raise BadInputError(f"fit needs >= 2 sub-networks with one value each, got {len(configs)} and {len(y)}")
        if not np.all(np.isfinite(y) & (y > 0)):
            raise BadInputError(f"{self.metric}: every measured value must be a positive finite number")
        self._check_source()
        X = self.features.transform(configs)
        self.best_params_, self.cv_mape_pct_ = self._select(X, y)
        self.prior_coef_, self.booster_ = self._fit_pipeline(X, y, **self.best_params_)
        self.metadata_ = self._metadata(len(y), provenance)
        return self

    def _select(self, X: np.ndarray, y: np.ndarray) -> tuple[dict[str, int], float | None]:
        """The grid point with the lowest k-fold cross-validated MAPE (rounds read off one fit per depth)."""
        grid = self.param_grid or (TRANSFER_GRID if self.transfer_from else DEFAULT_GRID)
        folds = min(self.cv_folds, len(y))
        if folds < 2 or len(grid["max_depth"]) * len(grid["num_boost_round"]) == 1:
            return {"max_depth": grid["max_depth"][0], "num_boost_round": grid["num_boost_round"][0]}, None
        order = np.random.default_rng(self.random_state).permutation(len(y))
        errors = {point: [] for point in itertools.product(grid["max_depth"], grid["num_boost_round"])}
        for held in np.array_split(order, folds):
            train = np.setdiff1d(order, held)
            for depth in grid["max_depth"]:
                coef, booster = self._fit_pipeline(X[train], y[train], depth, max(grid["num_boost_round"]))
                for rounds in grid["num_boost_round"]:
                    pred = self._predict_features(X[held], coef, booster, rounds)
                    errors[(depth, rounds)].append(np.abs(pred / y[held] - 1))
        scores = {point: float(np.mean(np.concatenate(e))) * 100 for point, e in errors.items()}
        depth, rounds = min(scores, key=scores.get)
        return {"max_depth": depth, "num_boost_round": rounds}, scores[(depth, rounds)]

    def _fit_pipeline(self, X: np.ndarray, y: np.ndarray, max_depth: int, num_boost_round: int):
        import xgboost as xgb

        cost = self._to_cost(y)
        coef = _fit_prior(self._prior_basis(X), cost)
        residual = np.log(cost / self._prior(X, coef))
        params = {
            "objective": self.objective,
            "max_depth": max_depth,
            "eta": self.learning_rate,
            "subsample": 0.8,
            "colsample_bytree": 0.8,
            "seed": self.random_state,
            "nthread": self.n_jobs,
        }
        if self.transfer_from is not None:
            params["base_score"] = 0.0  # no trees: the affine prior alone
        booster = xgb.train(params, xgb.DMatrix(X, label=residual), num_boost_round=num_boost_round)
        return coef, booster

    def _metadata(self, n_train: int, provenance: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "metric": metric(self.metric).name,
            "unit": metric(self.metric).unit,
            "space_id": self.features.space.id,
            "shapes": dict(self.features.shapes),
            "feature_schema_version": FEATURE_SCHEMA_VERSION,
            "hyperparameters": {**self.best_params_, "learning_rate": self.learning_rate, "objective": self.objective},
            "cv_mape_pct": self.cv_mape_pct_,
            "n_train": n_train,
            **(provenance or {}),
            **({"transfer": self._transfer_metadata(n_train)} if self.transfer_from is not None else {}),
            "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
        }

    # ---- predicting ---------------------------------------------------------------------------
    def predict(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        """Predicted `metric` of each config, in the metric's unit."""
        return self.predict_widths(*self.features.widths_from_configs(configs))

    def predict_genes(self, genes: np.ndarray) -> np.ndarray:
        """Predicted `metric` of a pymoo population in the space's integer encoding."""
        return self.predict_widths(*self.features.widths_from_genes(genes))

    def predict_widths(self, depth: np.ndarray, widths: np.ndarray) -> np.ndarray:
        self._check_fitted()
        X = self.features.transform_widths(depth, widths)
        return self._predict_features(X, self.prior_coef_, self.booster_, None)

    def _predict_features(self, X: np.ndarray, coef: np.ndarray, booster, rounds: int | None) -> np.ndarray:
        """`rounds`: the first trees only (cross-validation), None: all of them."""
        if rounds == 0:
            correction = np.zeros(len(X))
        else:
            correction = booster.inplace_predict(X, iteration_range=(0, rounds or 0)).astype(np.float64)
        return self._from_cost(self._prior(X, coef) * np.exp(correction))

    # ---- the prior: a per-layer cost table, or the source predictor's prediction ----------------
    def _prior_basis(self, X: np.ndarray) -> np.ndarray:
        if self.transfer_from is not None:
            source = self.transfer_from.predictor
            predicted = source._predict_features(X, source.prior_coef_, source.booster_, None)
            return np.column_stack([np.ones(len(X)), self._to_cost(predicted)])
        return np.hstack([np.ones((len(X), 1)), X[:, self.features.count_columns]])

    def _prior(self, X: np.ndarray, coef: np.ndarray) -> np.ndarray:
        return self._prior_basis(X) @ coef

    def _to_cost(self, y: np.ndarray) -> np.ndarray:
        return 1.0 / y if metric(self.metric).higher_is_better else y

    _from_cost = _to_cost  # the inverse of an inverse

    # ---- transfer -------------------------------------------------------------------------------
    def _check_source(self) -> None:
        """A source must predict the same figure from the same features (space, model shape, lengths)."""
        if self.transfer_from is None:
            return
        if not isinstance(self.transfer_from, TransferSource):
            raise BadInputError(f"transfer_from must be a TransferSource, got {type(self.transfer_from).__name__}",
                                param="transfer_from")  # fmt: skip
        source = self.transfer_from.predictor
        source._check_fitted()
        name = self.transfer_from.reference.get("name", source.source)
        if source.metadata_["metric"] != metric(self.metric).name:
            raise BadInputError(f"{name}: predicts {source.metadata_['metric']}, not {metric(self.metric).name}",
                                param="transfer_from")  # fmt: skip
        mine, theirs = self.features.to_dict(), source.features.to_dict()
        for key, what in (("space", "space"), ("model_shape", "super-network shape"), ("shapes", "lengths (shapes)")):
            if mine[key] != theirs[key]:
                detail = f"{theirs['space']['name']} vs {mine['space']['name']}" if key == "space" else f"{theirs[key]} vs {mine[key]}"
                raise BadInputError(f"{name}: fitted for another {what} ({detail}); a source must share the target's",
                                    param="transfer_from")  # fmt: skip

    def _transfer_metadata(self, n_train: int) -> dict[str, Any]:
        return {
            "source": dict(self.transfer_from.reference),
            "target_samples": n_train,
            "method": "prior = a + b * source prediction (non-negative, least absolute relative error) x XGBoost correction",
            "prior_coef": {"intercept": float(self.prior_coef_[0]), "source_scale": float(self.prior_coef_[1])},
        }

    # ---- checks -------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "booster_"):
            raise NotFittedError("this LatencyPredictor is not fitted yet: call fit(configs, y) or LatencyPredictor.load(path)")

    @property
    def source(self) -> str:
        return getattr(self, "source_", "predictor")

    def check_space(self, space: SearchSpace) -> None:
        """Refuse to predict for sub-networks of another search space."""
        self._check_fitted()
        if space.id != self.metadata_["space_id"]:
            raise BadInputError(
                f"{self.source}: fitted for space {self.metadata_['space_id']}, but the sub-networks come from "
                f"space {space.id}; fit a predictor on a profile of that space"
            )

    def check_target(self, fingerprint: dict[str, Any]) -> None:
        """Refuse a target other than the one profiled (`fingerprint` as in a profile's fingerprint.json)."""
        self._check_fitted()
        mine, theirs = self.metadata_.get("fingerprint_id"), fingerprint.get("fingerprint_id")
        if mine != theirs:
            raise BadInputError(
                f"{self.source}: fitted on target '{self.metadata_.get('target')}' (fingerprint {mine}), not on "
                f"'{fingerprint.get('target', 'this device')}' (fingerprint {theirs}); profile that target and fit again"
            )

    # ---- files ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The predictor file's JSON object."""
        return predictor_file.to_body(self._content())

    def save(self, path: str | Path) -> Path:
        """Write atomically: a failure leaves any existing file at `path` untouched."""
        return predictor_file.write(path, self._content())

    @classmethod
    def load(cls, path: str | Path) -> "LatencyPredictor":
        return cls._from_content(predictor_file.read(path))

    def _content(self) -> PredictorFile:
        self._check_fitted()
        transfer = None
        if self.transfer_from is not None:
            transfer = (self.transfer_from.reference, self.transfer_from.predictor._content())
        return PredictorFile(self.metadata_, self.features, self.prior_coef_, self.booster_, transfer)

    @classmethod
    def _from_content(cls, content: PredictorFile) -> "LatencyPredictor":
        metadata, hyper = content.metadata, content.metadata["hyperparameters"]
        transfer = None
        if content.transfer is not None:
            reference, source = content.transfer
            transfer = TransferSource(cls._from_content(source), reference)
        predictor = cls(content.features, metadata["metric"], learning_rate=hyper.get("learning_rate"),
                        objective=hyper.get("objective"), transfer_from=transfer)  # fmt: skip
        predictor.metadata_ = metadata
        predictor.best_params_ = {k: hyper[k] for k in TUNED_HYPERPARAMETERS}
        predictor.cv_mape_pct_ = metadata.get("cv_mape_pct")
        predictor.prior_coef_ = content.prior_coef
        predictor.booster_ = content.booster
        predictor.source_ = content.source
        if transfer is not None:
            predictor._check_source()
        return predictor


def _fit_prior(basis: np.ndarray, cost: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Non-negative per-layer cost table minimizing the mean absolute relative error.

    Iteratively reweighted NNLS: rows weighted by 1/sqrt|relative error| turn the squared loss into
    the absolute one, so a few measurements disturbed by a busy machine do not drag the table.
    """
    from scipy.optimize import nnls

    scaled = basis / cost[:, None]
    weights = np.ones(len(cost))
    for _ in range(iterations):
        coef, _ = nnls(scaled * weights[:, None], weights)
        weights = 1 / np.sqrt(np.maximum(np.abs(scaled @ coef - 1), 1e-4))
    if not np.all(basis @ coef > 0):
        raise LlamanasError("the per-layer cost prior came out zero for some sub-network; the data look degenerate")
    return coef


def _versions() -> dict[str, str]:
    import xgboost

    return {"xgboost": xgboost.__version__, "llamanas_deploy": __version__}
