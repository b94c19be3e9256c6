"""`predict_subnets`: a fitted predictor's figures for sub-networks, after checking they are its kind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..profiler.store import read_fingerprint
from ..space import SearchSpace, load_space
from ..subnet_config import SubnetConfig
from .estimator import LatencyPredictor
from .shipped import load_latency_predictor

SHOWN_METADATA = ("metric", "unit", "target", "fingerprint_id", "backend", "precision", "space_id", "shapes")


@dataclass(frozen=True)
class Predictions:
    """Predicted figures of sub-networks, with what the predictor predicts and how well it did held out."""

    predictor: LatencyPredictor
    configs: list[SubnetConfig]
    values: list[float]

    def to_dict(self) -> dict[str, Any]:
        meta = self.predictor.metadata_
        return {
            "predictor": self.predictor.source,
            **{k: meta.get(k) for k in SHOWN_METADATA},
            "test_mape_pct": meta.get("test_metrics", {}).get("mape_pct"),
            "predictions": [{"subnet_id": c.id, "subnet": c.to_dict(), "value": v} for c, v in zip(self.configs, self.values)],
        }


def predict_subnets(
    predictor: LatencyPredictor | str | Path,
    subnets: str | Sequence[SubnetConfig],
    *,
    space: SearchSpace | str | Path | None = None,
    target_profile: str | Path | None = None,
) -> Predictions:
    """Predict `subnets` (configs, or a sub-network argument: JSON lines file, inline JSON,
    FRONT.json#INDEX, 'largest' / 'smallest') with `predictor` (an object, a file, or a shipped
    name). `space` / `target_profile` (a profile directory) are refused when they are not the predictor's."""
    if not isinstance(predictor, LatencyPredictor):
        predictor = load_latency_predictor(predictor)
    if space is not None:
        predictor.check_space(load_space(space))
    if target_profile is not None:
        predictor.check_target(read_fingerprint(target_profile))
    own = predictor.features.space
    configs = own.resolve_many(subnets) if isinstance(subnets, str) else [own.validate(c) for c in subnets]
    return Predictions(predictor, configs, [float(v) for v in predictor.predict(configs)])
