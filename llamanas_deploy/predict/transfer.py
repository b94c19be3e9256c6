"""Transfer: a new device's (or format's) predictor from a few of its measurements and another predictor.

The source is another fitted predictor of the same figure, space, super-network shape and lengths
that was measured either on another device with the same backend and precision, or on the same
device with another backend or precision (torch fp32 -> onnxruntime int8). A source that differs in
both, or in neither, is refused: the first mixes two unknowns, the second has nothing to transfer.

`resolve_source` turns what the user names (a predictor object or file, a shipped predictor's name, a
`TransferSource`, or a profile directory, fitted here on all its sub-networks) into a checked
`TransferSource`; `transfer_rows` scores the alternatives a transfer has to beat on the same split;
`find_transfer_source` picks, among the shipped predictors, another device's for a new device's fit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import BadInputError
from ..profiler.base import Shapes
from ..profiler.store import MEASUREMENTS_FILE, read_profile
from ..space import SearchSpace
from ..subnet_config import SubnetConfig
from .compare import regression_metrics
from .dataset import ProfileData, load_profile_data
from .estimator import LatencyPredictor, TransferSource
from .features import FeatureBuilder
from .shipped import list_latency_predictors, load_latency_predictor

MIN_TRANSFER_SUBNETS = 5  # 3 to fit, 2 held out
SCRATCH = "xgboost + per-layer prior, from scratch (same samples)"
RESCALED = "source rescaled by one measured sub-network"
AS_IS = "source as is"
PARAM = "transfer_from"


def resolve_source(transfer_from: Any, data: ProfileData, features: FeatureBuilder, seed: int = 0) -> TransferSource:
    """A checked `TransferSource` for fitting `data` (see the module docstring)."""
    if isinstance(transfer_from, TransferSource):
        source = transfer_from
    elif isinstance(transfer_from, LatencyPredictor):
        source = TransferSource.of(transfer_from)
    elif isinstance(transfer_from, (str, Path)) and (Path(transfer_from) / "fingerprint.json").is_file():
        source = _source_from_profile(Path(transfer_from), data, features, seed)
    elif isinstance(transfer_from, (str, Path)):
        source = TransferSource.of(load_latency_predictor(transfer_from))
    else:
        raise BadInputError(f"expected a predictor, its file or name, or a profile directory, got {type(transfer_from).__name__}",
                            param=PARAM)  # fmt: skip
    check_source(source, data)
    return source


def find_transfer_source(
    space: SearchSpace, metric: str, *, backend: str, precision: str, device: str, threads: int, clock: str
) -> dict[str, Any] | None:
    """The shipped predictor of another device (its `list_latency_predictors` row) for `space`, `metric`,
    `backend`, `precision`, `device`, `threads`, `clock` and the default lengths: the one with the lowest
    held-out MAPE; None when there is none."""
    from ..profiler.fingerprint import current_fingerprint  # looked up when called: tests patch it

    here = current_fingerprint()["fingerprint_id"]
    wanted = {"space_id": space.id, "backend": backend, "precision": precision, "metric": metric, "device": device,
              "threads": threads, "clock": clock, "shapes": Shapes().to_dict()}  # fmt: skip
    try:
        rows = list_latency_predictors()
    except BadInputError:
        return None
    fits = [r for r in rows if r["fingerprint_id"] != here and all(r.get(k) == v for k, v in wanted.items())]
    return min(fits, key=lambda r: (r["test_mape_pct"] is None, r["test_mape_pct"] or 0.0, r["name"]), default=None)


def check_source(source: TransferSource, data: ProfileData) -> None:
    """Refuse a source of another space or figure, and one that differs from the target in both
    device and format (backend, precision) or in neither."""
    meta = source.predictor.metadata_
    ref = source.reference
    name = ref.get("name", source.predictor.source)
    if meta["space_id"] != data.space.id:
        raise BadInputError(f"{name}: fitted for space {meta['space_id']}, but {data.path} measured space {data.space.id}; "
                            f"a source must be of the same space", param=PARAM)  # fmt: skip
    if meta["metric"] != data.metric:
        raise BadInputError(f"{name}: predicts {meta['metric']}, the fit is of {data.metric}", param=PARAM)
    same_device = ref.get("fingerprint_id") == data.fingerprint["fingerprint_id"]
    theirs = (ref.get("backend"), ref.get("precision"))
    mine = (data.setting["backend"], data.setting["precision"])
    if same_device and theirs == mine:
        raise BadInputError(f"{name}: measured on this device ({data.target}) with the same backend and precision "
                            f"({' '.join(mine)}); nothing to transfer: fit without a source", param=PARAM)  # fmt: skip
    if not same_device and theirs != mine:
        raise BadInputError(
            f"{name}: another device ({ref.get('target')}) and another backend/precision ({' '.join(map(str, theirs))}, "
            f"target {' '.join(mine)}); transfer from the same backend on another device, or from another backend "
            f"on this device",
            param=PARAM,
        )


def kind_of(source: TransferSource, data: ProfileData) -> str:
    """'device' (same format, another device) or 'format' (same device, another backend/precision)."""
    return "format" if source.reference.get("fingerprint_id") == data.fingerprint["fingerprint_id"] else "device"


def _source_from_profile(path: Path, data: ProfileData, features: FeatureBuilder, seed: int) -> TransferSource:
    """Fit the source on every usable sub-network of the profile at `path`: the target's backend and
    precision when it is another device; on the same device, another format (the one with the most
    sub-networks)."""
    profile = read_profile(path)
    same_device = profile.fingerprint.get("fingerprint_id") == data.fingerprint["fingerprint_id"]
    mine = (data.setting["backend"], data.setting["precision"])
    counts: dict[tuple[str, str], set[str]] = {}
    for r in profile.records:
        if r.space_id == data.space.id:
            counts.setdefault((r.backend, r.precision), set()).add(r.raw.get("subnet_id"))
    wanted = [f for f in counts if (f != mine if same_device else f == mine)]
    if not wanted:
        need = "another backend/precision than " if same_device else ""
        raise BadInputError(f"{path}: no measurements of space {data.space.id} with {need}{' '.join(mine)} "
                            f"(present: {sorted(counts)})", param=PARAM)  # fmt: skip
    backend, precision = max(wanted, key=lambda f: (len(counts[f]), f == ("torch", "fp32"), f))
    source_data = load_profile_data(path, data.metric, data.space, backend, precision)
    source_features = FeatureBuilder(data.space, features.shape, source_data.setting["shapes"])
    predictor = LatencyPredictor(source_features, data.metric, random_state=seed)
    predictor.fit(source_data.configs, source_data.y, provenance=source_data.provenance())
    predictor.source_ = str(path)
    digest = hashlib.sha256((path / MEASUREMENTS_FILE).read_bytes()).hexdigest()
    return TransferSource.of(predictor, name=str(path), fitted_from_profile=True, profile_measurements_sha256=digest)


def transfer_rows(
    source: TransferSource,
    scratch: LatencyPredictor | None,
    configs: Sequence[SubnetConfig],
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
) -> list[dict[str, Any]]:
    """What a transfer has to beat, on the same held-out rows: the same estimator fitted from scratch on
    the same target rows, the source rescaled by the first training sub-network, the source as is."""
    test_configs = [configs[i] for i in test]
    rows = []
    if scratch is not None:
        model = scratch.fit([configs[i] for i in train], y[train])
        rows.append({"model": SCRATCH, **regression_metrics(y[test], model.predict(test_configs))})
    anchor = [configs[train[0]]]
    predicted = source.predictor.predict(test_configs)
    scale = y[train[0]] / float(source.predictor.predict(anchor)[0])
    rows.append({"model": RESCALED, **regression_metrics(y[test], predicted * scale)})
    rows.append({"model": AS_IS, **regression_metrics(y[test], predicted)})
    return rows
