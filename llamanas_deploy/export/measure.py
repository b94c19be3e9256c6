"""Measure an artifact on this device with the profiler's protocol, and compare with its prediction.

The timing is the profiler's own: `ArtifactBackend` (the `onnxruntime` backend opening the
artifact's ONNX file) measured by `Backend.measure_visits` (warm-up, repeats, median, IQR /
CV, fast end, re-measuring or flagging noisy figures, visits combined). Shapes, threads and
clock default to those the manifest's predictor was trained on, and the figure compared with
its prediction is the statistic it learned (`store.kept_figure`), so the error in % compares
like with like.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..profile.base import Shapes
from ..profile.stats import Protocol
from ..subnet_config import SubnetConfig


def bench_decoder(
    directory: Path,
    manifest: dict[str, Any],
    shapes: Shapes | None = None,
    protocol: Protocol | None = None,
    threads: int | None = None,
    clock: str | None = None,
) -> dict[str, Any]:
    """Measure the artifact in `directory` described by `manifest`; returns the `measured` block."""
    from ..profile.backends.onnxruntime_backend import ArtifactBackend
    from ..profile.fingerprint import current_fingerprint
    from ..runtime import Artifact

    predicted = manifest.get("predicted") or {}
    if shapes is None:
        shapes = Shapes(**predicted["shapes"]) if predicted.get("shapes") else Shapes()
    threads = threads or predicted.get("threads") or 1
    clock = clock or predicted.get("clock") or "wall"
    protocol = protocol or Protocol()
    backend = ArtifactBackend(Artifact(Path(directory), manifest), threads, clock=clock)
    subnet = SubnetConfig.from_dict(manifest["subnet"], f"{directory}/manifest.json")
    backend.warm_up(subnet, shapes)
    figures = backend.measure_visits([subnet], shapes, protocol)[0].to_dict()
    measured = {
        "fingerprint_id": current_fingerprint()["fingerprint_id"],
        "backend": backend.name,
        "precision": manifest["precision"],
        "device": manifest["device"],
        "threads": threads,
        "clock": clock,
        "shapes": shapes.to_dict(),
        "protocol": protocol.to_dict(),
        **{k: v for k, v in figures.items() if k != "weights"},
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if predicted:
        measured["vs_predicted"] = compare_with_prediction(measured, predicted)
    return measured


def compare_with_prediction(measured: dict[str, Any], predicted: dict[str, Any]) -> dict[str, Any]:
    """Error of the prediction in % of the measured figure, for the predictor's metric."""
    from ..profile.store import METRICS, kept_figure

    field = METRICS.get(predicted.get("metric", ""), predicted.get("metric"))
    figure = measured.get(field)
    value = None if figure is None else kept_figure(figure, predicted.get("statistic") or "median")
    setup = ("backend", "precision", "device", "threads", "fingerprint_id")
    same_setup = all(predicted.get(k) in (None, measured.get(k)) for k in setup)
    return {
        "metric": field,
        "predicted": predicted["value"],
        "measured": value,
        "error_pct": None if value in (None, 0) else (predicted["value"] - value) / value * 100,
        "same_setup": same_setup,
    }
