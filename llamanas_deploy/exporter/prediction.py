"""What a latency predictor says of an exported sub-network: the manifest's `predicted` block.

Both exporters (`pipeline` for ONNX, `gguf` for llama.cpp) record it the same way, before anything
slow starts, so a predictor of another space, or one whose prediction `bench` could not read, is
refused up front naming the predictor.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..space import SearchSpace
from ..subnet_config import SubnetConfig
from .measure import BenchSettings, checked_prediction

if TYPE_CHECKING:
    from ..predict.estimator import LatencyPredictor

RECORDED = (
    "metric", "unit", "statistic", "target", "fingerprint_id", "backend", "precision", "device", "threads", "clock", "shapes"
)  # fmt: skip


def predicted_block(predictor: LatencyPredictor | str | Path | None, space: SearchSpace, subnet: SubnetConfig,
                    bench: BenchSettings | None) -> dict[str, Any] | None:  # fmt: skip
    """`predictor`'s prediction for `subnet` with the setting it was trained on (None without a predictor);
    checked as `bench` will read it when the export measures the artifact."""
    if predictor is None:
        return None
    predictor, name = _load_predictor(predictor, space)
    meta = predictor.metadata_
    predicted = {"predictor": name, "value": float(predictor.predict([subnet])[0]), **{k: meta.get(k) for k in RECORDED}}
    if bench is not None:
        checked_prediction(predicted, f"{name} (the prediction it gives)")
    return predicted


def _load_predictor(predictor: LatencyPredictor | str | Path, space: SearchSpace) -> tuple[LatencyPredictor, str]:
    """The predictor (loaded when given as a path) checked against `space`, and how the manifest names it."""
    from ..predict.estimator import LatencyPredictor

    if isinstance(predictor, (str, Path)):
        name, predictor = str(predictor), LatencyPredictor.load(predictor)
    else:
        name = predictor.source
    predictor.check_space(space)
    return predictor, name
