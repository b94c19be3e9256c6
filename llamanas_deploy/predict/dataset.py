"""Training data for a predictor: one figure of one measurement setting of a hardware profile.

A profile may hold several settings (backend, precision, device, threads, shapes) and several
spaces; a predictor is fitted on exactly one of each, so this module picks it (or says which
parameters choose among the ones present), drops flagged measurements (their spread was too wide),
and keeps one value per sub-network from its visits (`combine_visits`): the best of their fast
ends for a timing (as `stats.Measurement.combine` does), or, when some records predate the
fast end, the median of their medians (`ProfileData.statistic` says which); the highest peak
memory.

Drift: a profile measured with anchors (`profile.runner.with_anchors`) holds, between the planned
sub-networks, measurements of one fixed anchor sub-network. With `drift="anchor"` every timing is
divided by the anchor's figure interpolated at its place in the file and multiplied by the anchor's
median over the profile: the figure the sub-network would have had if the machine had kept its
typical speed throughout (`ProfileData.anchor` says so, and by how much the anchor moved). The
anchor's figure at each place is the lowest of `ANCHOR_WINDOW` neighbouring anchor measurements.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..concepts import TIMED_FIGURES, check_choice
from ..concepts import metric as metric_named
from ..errors import BadInputError
from ..model.families import BUILTIN_MODELS, ModelShape, read_shape
from ..profiler.stats import best_of
from ..profiler.store import MEASUREMENTS_FILE, read_profile
from ..space import SearchSpace, builtin_spaces, load_space
from ..subnet_config import SubnetConfig

if TYPE_CHECKING:
    from ..model.supernet import SuperNetwork

MIN_SUBNETS = 10
SETTING_KEYS = ("backend", "precision", "device", "threads", "clock", "shapes", "model_id")
DRIFT_CORRECTIONS = ("anchor", "none")
MIN_ANCHORS = 2  # one before and one after: fewer cannot follow a change of speed
# each anchor figure is the lowest of it and its neighbours: one anchor measurement carries the fast noise
# (a burst of other work) that only ever adds time, which followed as drift would move every figure near it
# (measured: benchmarks/measurement_stability.py); a phase longer than three anchors is still followed
ANCHOR_WINDOW = 3


@dataclass
class ProfileData:
    """One metric of one measurement setting of a profile, one value per sub-network (`load_profile_data`)."""

    path: Path
    metric: str  # its name in `concepts.METRICS`
    space: SearchSpace
    fingerprint: dict[str, Any]
    setting: dict[str, Any]  # SETTING_KEYS -> value
    configs: list[SubnetConfig]
    y: np.ndarray  # per sub-network: `combine_visits` of its visits
    visits: list[list[float]]  # per sub-network: each kept visit's figure, in measuring order
    statistic: str  # of each timing: "best" (fast end) or "median"
    n_records: int
    n_flagged: int
    n_loaded: int = 0  # kept records measured while the machine was busy with other work
    anchor: dict[str, Any] | None = None  # the drift correction applied (`Anchors.describe`); None: none

    @property
    def target(self) -> str:
        return self.fingerprint["target"]

    def provenance(self) -> dict[str, Any]:
        """What a predictor fitted on this data must remember about where it came from."""
        return {
            "target": self.target,
            "fingerprint_id": self.fingerprint["fingerprint_id"],
            **{k: self.setting[k] for k in ("backend", "precision", "device", "threads", "clock", "model_id")},
            "statistic": self.statistic,
            "profile": str(self.path),
            "drift_corrected_by": self.anchor,
        }


def load_profile_data(
    path: str | Path,
    metric: str,
    space: SearchSpace | None = None,
    backend: str | None = None,
    precision: str | None = None,
    *,
    min_subnets: int = MIN_SUBNETS,
    drift: str = "anchor",
) -> ProfileData:
    """The records of `metric` in the profile at `path` for one space and one setting (see the module docstring);
    fewer than `min_subnets` usable sub-networks are refused (a transfer fit needs fewer than one from scratch).
    `drift`: "anchor" corrects timings by the profile's anchor measurements where it has them; "none" keeps them."""
    check_choice(drift, DRIFT_CORRECTIONS, "drift")
    metric = metric_named(metric).name
    profile = read_profile(path)
    source = f"{profile.path / MEASUREMENTS_FILE}"
    if not profile.records:
        raise BadInputError(f"{source}: no measurements to fit on")
    space = space or _space_of(profile.records, source)
    records = [r for r in profile.records if r.space_id == space.id]
    if not records:
        present = sorted({r.space_id for r in profile.records})
        raise BadInputError(f"{source}: no measurements of space {space.id} (present: {present})")
    records = [r for r in records if (backend in (None, r.backend)) and (precision in (None, r.precision))]
    setting = _one_setting(records, source, backend, precision)
    records = [r for r in records if _setting(r.raw) == setting]
    kept = [r for r in records if not _flagged(r.raw, metric)]
    statistic = "best" if all(r.has_best(metric) for r in kept) else "median"
    anchors = [a for a in profile.anchors if a.space_id == space.id and _setting(a.raw) == setting]
    correction = Anchors.of(anchors, metric, statistic) if drift == "anchor" else None
    configs, visits = _visits_per_subnet(kept, metric, statistic, space, source, correction)
    if len(configs) < min_subnets:
        raise BadInputError(
            f"{source}: {len(configs)} usable sub-networks for {_describe(setting)}; a predictor needs >= {min_subnets}"
        )
    y = np.array([combine_visits(v, metric, statistic) for v in visits], dtype=np.float64)
    loaded = sum(r.loaded for r in kept)
    return ProfileData(profile.path, metric, space, profile.fingerprint, setting, configs, y, visits, statistic,
                       len(records), len(records) - len(kept), loaded, correction.describe() if correction else None)


@dataclass(frozen=True)
class Anchors:
    """The anchor's figure along a profile (by line in measurements.jsonl) and its median (`scale`)."""

    subnet_id: str
    lines: np.ndarray
    values: np.ndarray

    @classmethod
    def of(cls, anchors: list, metric: str, statistic: str) -> "Anchors | None":
        """None when fewer than `MIN_ANCHORS` unflagged anchors, or `metric` is not a timing."""
        kept = sorted((a for a in anchors if not _flagged(a.raw, metric)), key=lambda a: a.line)
        if len(kept) < MIN_ANCHORS or metric_named(metric).field not in TIMED_FIGURES:
            return None
        values = np.array([a.value(metric, statistic) for a in kept], dtype=np.float64)
        rate, half = metric_named(metric).higher_is_better, ANCHOR_WINDOW // 2
        smoothed = [best_of(values[max(0, i - half) : i + half + 1], rate) for i in range(len(values))]
        return cls(kept[0].raw["subnet_id"], np.array([a.line for a in kept], dtype=np.float64), np.array(smoothed))

    @property
    def scale(self) -> float:
        return float(np.median(self.values))

    def corrected(self, value: float, line: int) -> float:
        """`value`, measured at `line`, as at the anchor's typical speed (a time or a rate alike)."""
        ratio = self.scale / float(np.interp(line, self.lines, self.values))
        return value * ratio

    def describe(self) -> dict[str, Any]:
        return {"method": "anchor", "subnet_id": self.subnet_id, "n": len(self.values), "scale": self.scale,
                "range_pct": round(float(100 * (self.values.max() / self.values.min() - 1)), 1)}  # fmt: skip


def combine_visits(values: list[float], metric: str, statistic: str) -> float:
    """One sub-network's figure from its visits (see the module docstring)."""
    figure = metric_named(metric)
    if figure.field not in TIMED_FIGURES:
        return max(values)  # peak memory: a memory budget has to hold on every visit
    if statistic == "median":
        return float(np.median(values))
    return best_of(values, higher_is_better=figure.higher_is_better)


def _flagged(raw: dict[str, Any], metric: str) -> bool:
    """A timing's own flag when the profiler gives one, else the record's; a plain figure (peak
    memory) has no spread of its own, so a flag raised by the record's timings does not drop it."""
    figure = raw.get(metric_named(metric).field)
    return isinstance(figure, dict) and bool(figure.get("flagged", raw["flagged"]))


def resolve_shape(data: ProfileData, model: "SuperNetwork | str | Path | None") -> ModelShape:
    """The super-network shape the profile measured: `model`'s, checked, or the built-in one it names."""
    return resolve_model(data, model)[1]


def resolve_model(data: ProfileData, model: "SuperNetwork | str | Path | None") -> tuple[Any, ModelShape]:
    """(the super-network the profile measured, its shape): `model`, checked, or the built-in one it names."""
    wanted = data.setting.get("model_id")
    if model is not None:
        shape, name = (read_shape(model), str(model)) if isinstance(model, (str, Path)) else (model.shape, str(model.source))
        if wanted not in (None, shape.id):
            raise BadInputError(f"{name}: shape id {shape.id}, but {data.path} measured model {wanted}", param="model")
        data.space.check_super_network(shape, name)
        return model, shape
    for name in BUILTIN_MODELS:
        shape = read_shape(name)
        if wanted in (None, shape.id):
            data.space.check_super_network(shape, name)
            return name, shape
    raise BadInputError(f"{data.path}: measured model {wanted} is not a built-in model; give the model's config.json",
                        param="model")  # fmt: skip


def _space_of(records: list, source: str) -> SearchSpace:
    """The built-in space the records were measured in, when they name exactly one."""
    ids = sorted({r.space_id for r in records})
    builtins = {load_space(name).id: name for name in builtin_spaces()}
    if len(ids) == 1 and ids[0] in builtins:
        return load_space(builtins[ids[0]])
    raise BadInputError(f"{source}: measurements of space(s) {ids}; give the space's name or JSON file", param="space")


def _setting(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: raw.get(k) for k in SETTING_KEYS}


def _describe(setting: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in setting.items())


def _one_setting(records: list, source: str, backend: str | None, precision: str | None) -> dict[str, Any]:
    settings = {json.dumps(_setting(r.raw), sort_keys=True): _setting(r.raw) for r in records}
    wanted = f"backend {backend or 'any'}, precision {precision or 'any'}"
    if not settings:
        raise BadInputError(f"{source}: no measurements with {wanted}")
    if len(settings) > 1:
        listed = "; ".join(_describe(s) for s in settings.values())
        raise BadInputError(f"{source}: {len(settings)} measurement settings match ({listed}); choose the backend and precision",
                            param="backend")  # fmt: skip
    return next(iter(settings.values()))


def _visits_per_subnet(records: list, metric: str, statistic: str, space: SearchSpace, source: str,
                       correction: Anchors | None):  # fmt: skip
    values: dict[str, list[float]] = defaultdict(list)
    configs: dict[str, SubnetConfig] = {}
    for r in records:
        config = space.validate(r.subnet, f"{source}: subnet {r.raw['subnet_id']}")
        try:
            value = r.value(metric, statistic)
        except (TypeError, ValueError, KeyError):
            value = float("nan")
        if not math.isfinite(value) or value <= 0:
            raise BadInputError(f"{source}: subnet {r.raw['subnet_id']}: {metric} is not a positive number")
        configs[config.id] = config
        values[config.id].append(correction.corrected(value, r.line) if correction else value)
    return list(configs.values()), [values[i] for i in configs]
