"""Latency predictors: XGBoost on sub-network features, fitted from a hardware profile.

`LatencyPredictor` (estimator.py) is what the search uses; features.py turns sub-networks into
feature rows, dataset.py reads a profile's measurements, compare.py scores XGBoost against
the baselines on one held-out split, train.py ties them together for `llamanas fit`.
"""

from .estimator import LatencyPredictor, NotFittedError
from .features import FEATURE_SCHEMA_VERSION, FeatureBuilder

__all__ = ["LatencyPredictor", "NotFittedError", "FeatureBuilder", "FEATURE_SCHEMA_VERSION"]
