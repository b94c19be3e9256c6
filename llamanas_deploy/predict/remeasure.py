"""`fit --remeasure`: the held-out sub-networks measured once more, as their profile measured them.

A predictor's held-out error mixes two things: what the predictor gets wrong, and how far the
machine's second measurement of a sub-network lands from its first. Measuring the held-out
sub-networks again (one visit, with the anchor before and after them) and scoring both the first
measurement and the predictor against it tells the user which of the two limits the accuracy.
With a drift-corrected profile the re-measurement is corrected the same way and put on the
profile's anchor scale, so the three figures compare like for like.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..profiler.base import Shapes
from ..profiler.runner import ProfileSettings, profile
from ..profiler.stats import Protocol
from ..progress import Callback
from ..subnet_config import SubnetConfig
from .compare import regression_metrics
from .dataset import ProfileData, load_profile_data

if TYPE_CHECKING:
    from ..model.supernet import SuperNetwork


@dataclass(frozen=True)
class Remeasurement:
    """The held-out sub-networks measured again: how the first measurement and the predictor agree with it."""

    n: int  # sub-networks re-measured and not flagged
    first_vs_again: dict[str, float] | None  # `regression_metrics` of the profile's figure against the new one
    predictor_vs_again: dict[str, float] | None  # ... of the predictor's; None when every re-measurement was flagged

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "first_vs_again": self.first_vs_again, "predictor_vs_again": self.predictor_vs_again}


def remeasure(data: ProfileData, configs: Sequence[SubnetConfig], first: np.ndarray, predicted: np.ndarray,
              model: "SuperNetwork | str | Path", callback: Callback = None) -> Remeasurement:  # fmt: skip
    """Measure `configs` once more in `data`'s setting; compare `first` (their profile figures) and
    `predicted` with the new figures."""
    setting = data.setting
    settings = ProfileSettings(backend=setting["backend"], precision=setting["precision"], device=setting["device"],
                               threads=setting["threads"], clock=setting["clock"], shapes=Shapes(**setting["shapes"]),
                               protocol=Protocol(visits=1), anchor_every=len(configs))  # fmt: skip
    drift = "anchor" if data.anchor else "none"
    with tempfile.TemporaryDirectory(prefix="llamanas-remeasure-") as scratch:
        out = Path(scratch) / "profile"
        profile(model, data.space, settings, target=f"{data.target}-again", out=out, plan=list(configs), callback=callback)
        again = load_profile_data(out, data.metric, data.space, min_subnets=0, drift=drift)  # all flagged: none
    scale = data.anchor["scale"] / again.anchor["scale"] if data.anchor and again.anchor else 1.0
    figures = {c.id: y * scale for c, y in zip(again.configs, again.y)}
    kept = [i for i, c in enumerate(configs) if c.id in figures]
    if not kept:
        return Remeasurement(0, None, None)
    measured = np.array([figures[configs[i].id] for i in kept])
    return Remeasurement(len(kept), regression_metrics(measured, first[kept]), regression_metrics(measured, predicted[kept]))
