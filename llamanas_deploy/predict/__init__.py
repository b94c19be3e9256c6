"""Latency predictors: XGBoost on sub-network features, fitted from a hardware profile.

`LatencyPredictor` (estimator.py, a scikit-learn estimator) is what the search uses; features.py
turns sub-networks into feature rows, dataset.py reads a profile's measurements, compare.py scores
XGBoost against the baselines on one held-out split, train.py ties them together
(`fit(profile_dir, metric, FitSettings()) -> FitResult`), query.py predicts sub-networks
(`predict_subnets`), shipped.py finds the shipped predictors by name.
"""

from .dataset import ProfileData, load_profile_data
from .estimator import LatencyPredictor, NotFittedError
from .features import FEATURE_SCHEMA_VERSION, FeatureBuilder
from .query import Predictions, predict_subnets
from .shipped import list_latency_predictors, load_latency_predictor
from .train import FitResult, FitSettings, fit

__all__ = [
    "LatencyPredictor", "NotFittedError", "FeatureBuilder", "FEATURE_SCHEMA_VERSION", "fit", "FitSettings", "FitResult",
    "ProfileData", "load_profile_data", "predict_subnets", "Predictions", "list_latency_predictors",
    "load_latency_predictor",
]  # fmt: skip
