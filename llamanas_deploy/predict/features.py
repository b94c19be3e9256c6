"""Feature vectors of sub-networks: the per-layer encoding plus analytic cost features.

A sub-network is first reduced to a width matrix `W` (one row per sub-network, one column per
kept-layer position, 0 where the sub-network has no such layer) and its depth; every feature is
then a numpy expression over whole batches, so a search population of 100k is featurized in
milliseconds. The analytic features (parameters, FLOPs, KV bytes, bytes moved per decode token)
are exactly `analytics.subnet_stats`: each of them is affine in (depth, sum of widths), so three
calls to `subnet_stats` give its coefficients, and a fourth call checks them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from ..analytics import subnet_stats
from ..errors import BadInputError
from ..jsonfiles import checked_object, checked_positive_integers
from ..model.families import ModelShape
from ..profiler.base import SHAPE_FIELDS
from ..space import SearchSpace, space_from_dict
from ..subnet_config import SubnetConfig

FEATURE_SCHEMA_VERSION = 1
ANALYTIC_STATS = (
    "params",
    "matmul_params",
    "prefill_flops",
    "decode_flops",
    "kv_cache_bytes_per_token",
    "decode_bytes_moved",
)
WIDTH_KEY = "intermediate_sizes"


@dataclass(frozen=True)
class FeatureBuilder:
    """Turns sub-networks of one space, on one model shape and one set of lengths, into features."""

    space: SearchSpace
    shape: ModelShape
    shapes: dict[str, int]  # batch_size, prompt_len, context_len, ... as the profile measured them
    _affine: dict[str, tuple[float, float, float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if [d.key for d in self.space.layer_dims] != [WIDTH_KEY]:
            keys = [d.key for d in self.space.layer_dims]
            raise BadInputError(f"space {self.space.name}: features support only '{WIDTH_KEY}', got {keys}")
        checked_positive_integers(self.shapes, SHAPE_FIELDS, "FeatureBuilder", "shapes")  # as a saved one must hold
        object.__setattr__(self, "_affine", _affine_stats(self.shape, self.shapes))

    # ---- description ------------------------------------------------------------------------
    @property
    def choices(self) -> np.ndarray:
        return np.array(self.space.dim(WIDTH_KEY).choices, dtype=np.int64)

    @property
    def names(self) -> list[str]:
        return (
            ["depth", "width_sum", "width_min", "width_max"]
            + [f"layers_of_width_{c}" for c in self.choices]
            + [f"width_{j}" for j in range(self.space.max_layers)]
            + list(ANALYTIC_STATS)
        )

    @property
    def count_columns(self) -> list[int]:
        """Columns counting the layers of each width: the basis of the per-layer cost prior."""
        return [self.names.index(f"layers_of_width_{c}") for c in self.choices]

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_schema_version": FEATURE_SCHEMA_VERSION,
            "space": self.space.to_dict(),
            "model_shape": asdict(self.shape),
            "shapes": dict(self.shapes),
            "names": self.names,
        }

    @classmethod
    def from_dict(cls, data: Any, source: str) -> "FeatureBuilder":
        """The builder a predictor file's `features` section describes; `BadInputError` naming `source` and field."""
        checked_object(data, source, "features")
        version = data.get("feature_schema_version")
        if version != FEATURE_SCHEMA_VERSION:
            raise BadInputError(
                f"{source}: feature schema version {version} is not supported (expected {FEATURE_SCHEMA_VERSION}); "
                f"refit the predictor"
            )
        missing = [key for key in ("space", "model_shape", "shapes") if key not in data]
        if missing:
            raise BadInputError(f"{source}: features: missing {missing}")
        space = space_from_dict(data["space"], f"{source}: features.space")
        model_shape = checked_object(data["model_shape"], source, "features.model_shape")
        shape = ModelShape.from_config_dict(model_shape, f"{source}: features.model_shape")
        builder = cls(space, shape, checked_positive_integers(data["shapes"], SHAPE_FIELDS, source, "features.shapes"))
        if builder.names != data.get("names"):
            raise BadInputError(f"{source}: feature names do not match feature schema {FEATURE_SCHEMA_VERSION}")
        return builder

    # ---- sub-networks -> (depth, widths) ----------------------------------------------------------
    def widths_from_configs(self, configs: Sequence[SubnetConfig]) -> tuple[np.ndarray, np.ndarray]:
        """(depth, W) of configs; W[i, j] is the width of the j-th kept layer of config i, or 0."""
        n, slots = len(configs), self.space.max_layers
        depth = np.fromiter((c.num_layers for c in configs), dtype=np.int64, count=n)
        if n and depth.max() > slots:
            i = int(depth.argmax())
            raise BadInputError(f"sub-network {i}: {depth[i]} layers, but space {self.space.name} has {slots}")
        flat = np.fromiter((w for c in configs for w in c.intermediate_sizes), dtype=np.int64, count=int(depth.sum()))
        widths = np.zeros((n, slots), dtype=np.int64)
        widths[np.arange(slots) < depth[:, None]] = flat
        self._check(depth, widths)
        return depth, widths

    def widths_from_genes(self, genes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(depth, W) of a pymoo population in `SearchSpace.encode`'s integer encoding (rounded, clipped)."""
        genes = np.asarray(genes)
        expected = len(self.space.encoding_upper_bounds)
        if genes.ndim != 2 or genes.shape[1] != expected:
            raise BadInputError(f"gene matrix has shape {genes.shape}, expected (n, {expected})")
        genes = np.clip(np.rint(genes).astype(np.int64), 0, self.space.encoding_upper_bounds)
        depth = np.array(self.space.depth_choices, dtype=np.int64)[genes[:, 0]]
        slots = self.space.max_layers
        widths = self.choices[genes[:, 1 : 1 + slots]] * (np.arange(slots) < depth[:, None])
        return depth, widths

    def _check(self, depth: np.ndarray, widths: np.ndarray) -> None:
        bad_depth = ~np.isin(depth, self.space.depth_choices)
        if bad_depth.any():
            i = int(np.flatnonzero(bad_depth)[0])
            raise BadInputError(
                f"sub-network {i}: num_layers {depth[i]} is not in {list(self.space.depth_choices)} "
                f"(space {self.space.name})"
            )
        bad = ~np.isin(widths, np.append(self.choices, 0))
        if bad.any():
            i, j = (int(v) for v in np.argwhere(bad)[0])
            raise BadInputError(
                f"sub-network {i}: layer {j}: intermediate size {widths[i, j]} is not in {self.choices.tolist()}"
            )

    # ---- (depth, widths) -> features ------------------------------------------------------------
    def transform(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        return self.transform_widths(*self.widths_from_configs(configs))

    def transform_widths(self, depth: np.ndarray, widths: np.ndarray) -> np.ndarray:
        """The feature matrix (n, len(names)), float64, columns in `names` order."""
        choices, slots = self.choices, widths.shape[1]
        out = np.empty((len(depth), len(self.names)), dtype=np.float64)
        out[:, 0] = depth
        out[:, 1] = widths.sum(axis=1)
        out[:, 2] = np.where(widths > 0, widths, choices.max()).min(axis=1)
        out[:, 3] = widths.max(axis=1)
        for k, c in enumerate(choices):
            out[:, 4 + k] = (widths == c).sum(axis=1)
        start = 4 + len(choices)
        out[:, start : start + slots] = widths
        for k, (c0, c1, c2) in enumerate(self._affine.values(), start + slots):
            out[:, k] = c0 + c1 * out[:, 0] + c2 * out[:, 1]
        return out


def _affine_stats(shape: ModelShape, shapes: dict[str, int]) -> dict[str, tuple[float, float, float]]:
    """Coefficients (c0, c_depth, c_width_sum) of every analytic stat, read off `subnet_stats`."""
    prompt, context = shapes["prompt_len"], shapes["context_len"]

    def stats(*sizes: int) -> dict[str, float]:
        s = subnet_stats(shape, SubnetConfig(len(sizes), tuple(sizes)), prompt, context).to_dict()
        return {k: float(s[k]) for k in ANALYTIC_STATS}

    a, b = 100, 300
    one_a, one_b, two_a = stats(a), stats(b), stats(a, a)
    coef = {}
    for k in ANALYTIC_STATS:
        c2 = (one_b[k] - one_a[k]) / (b - a)
        c1 = two_a[k] - one_a[k] - c2 * a
        coef[k] = (one_a[k] - c1 - c2 * a, c1, c2)
    check = stats(64, 512, 1000)
    for k, (c0, c1, c2) in coef.items():
        if not np.isclose(c0 + 3 * c1 + c2 * 1576, check[k], rtol=1e-12):
            raise ValueError(f"analytic stat {k} is not affine in (depth, sum of widths); features need updating")
    return coef
