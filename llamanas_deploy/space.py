"""Search spaces: elastic depth and elastic per-layer widths of a LLaMA super-network.

A space is a small JSON file (built-in ones live in `llamanas_deploy/spaces/`); what
`llamanas space show --json` prints is one too (its derived `id`, `num_points`, `num_distinct` are
checked against the space they describe)::

    {
      "schema_version": 1,
      "name": "tiny",
      "super_network": {"num_hidden_layers": 8, "intermediate_size": 768},
      "depth": {"choices": [4, 5, 6, 7, 8], "policy": "first"},
      "layer_dims": {"intermediate_sizes": {"choices": [192, 384, 576, 768], "policy": "first"}}
    }

Depth policies say which layers a depth keeps: `first` (the first N, the paper's natural reading),
`uniform` (evenly spaced, first and last kept), and `importance`, which drops layers in the order
the depth block lists (`"drop_order"`: every layer index once, least important first; measured on
the super-network by `model.importance`). At real scale `first` destroys a pretrained model (its
last layer matters as much as its first); `importance` keeps what the model needs.

`layer_dims` is keyed by the sub-network config's per-layer field, so a further elastic
dimension (attention heads) is one more entry there; callers go through `validate`,
`encode`, `decode` and the samplers, which iterate over `layer_dims`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .concepts import check_choice
from .errors import BadInputError
from .jsonfiles import read_json
from .subnet_config import SubnetConfig, read_subnet_arg, read_subnets

SPACE_SCHEMA_VERSION = 1
BUILTIN_DIR = Path(__file__).parent / "spaces"
LAYER_POLICIES = ("first", "uniform", "importance")
NEURON_POLICIES = ("first",)
SUPPORTED_LAYER_DIMS = ("intermediate_sizes",)

MAX_LAYERS, MAX_INTERMEDIATE_SIZE = 4096, 1 << 24  # far above any LLaMA; an absurd value is refused, not counted
MAX_POINT_DIGITS = 4000  # a count Python (and JSON readers) can still print as an integer; a LLaMA-2 70B space has 49
DERIVED_KEYS = ("id", "num_points", "num_distinct")  # what `space show --json` adds; a space file may keep them
SAMPLING_STRATEGIES = ("stratified", "random")  # stratified: smallest and largest first, then depth x width strata

@dataclass(frozen=True)
class LayerDim:
    """One elastic per-layer dimension: its config key, allowed values and which units are kept."""

    key: str
    choices: tuple[int, ...]
    policy: str = "first"


@dataclass(frozen=True)
class SearchSpace:
    name: str
    max_layers: int
    max_intermediate_size: int
    depth_choices: tuple[int, ...]
    layer_policy: str
    layer_dims: tuple[LayerDim, ...]
    description: str = ""
    drop_order: tuple[int, ...] = ()  # the `importance` policy's: every layer once, least important first

    # ---- identity -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SPACE_SCHEMA_VERSION,
            "name": self.name,
            "description": self.description,
            "super_network": {"num_hidden_layers": self.max_layers, "intermediate_size": self.max_intermediate_size},
            "depth": {"choices": list(self.depth_choices), "policy": self.layer_policy}
            | ({"drop_order": list(self.drop_order)} if self.drop_order else {}),
            "layer_dims": {d.key: {"choices": list(d.choices), "policy": d.policy} for d in self.layer_dims},
        }

    def derived(self) -> dict[str, Any]:
        """What follows from the space (`DERIVED_KEYS`): `to_dict() | derived()` is what `space show --json`
        prints, and it loads back as this space (a stale value is refused)."""
        return {"id": self.id, "num_points": self.num_points, "num_distinct": self.num_distinct}

    @property
    def id(self) -> str:
        """`name-<hash>`: the hash covers everything but the description, so edits are caught."""
        content = {k: v for k, v in self.to_dict().items() if k != "description"}
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.name}-{digest}"

    # ---- size -----------------------------------------------------------------------
    @property
    def num_points(self) -> int:
        """Size of the encoded space, counted as the paper does: depth choices x widths^max_layers."""
        per_layer = math.prod(len(d.choices) for d in self.layer_dims)
        return len(self.depth_choices) * per_layer**self.max_layers

    @property
    def num_distinct(self) -> int:
        """Distinct sub-networks: widths of dropped layers do not count."""
        per_layer = math.prod(len(d.choices) for d in self.layer_dims)
        return sum(per_layer**depth for depth in self.depth_choices)

    @property
    def smallest(self) -> SubnetConfig:
        return self._uniform_subnet(min(self.depth_choices), 0)

    @property
    def largest(self) -> SubnetConfig:
        return self._uniform_subnet(max(self.depth_choices), -1)

    @property
    def anchor(self) -> SubnetConfig:
        """The profiler's drift reference, measured between the planned sub-networks: the middle depth
        at the middle width (a quarter to half the full network's cost, and far from either end)."""
        depths, widths = self.depth_choices, self.dim("intermediate_sizes").choices  # both sorted
        return self._uniform_subnet(depths[len(depths) // 2], len(widths) // 2)

    def _uniform_subnet(self, depth: int, choice_index: int) -> SubnetConfig:
        sizes = (self.dim("intermediate_sizes").choices[choice_index],) * depth
        return SubnetConfig(depth, sizes, self.kept_layers(depth)).canonical()

    def dim(self, key: str) -> LayerDim:
        return next(d for d in self.layer_dims if d.key == key)

    # ---- layers ---------------------------------------------------------------------
    def kept_layers(self, depth: int) -> tuple[int, ...]:
        """Super-network layers kept at this depth under the space's layer-drop policy."""
        if self.layer_policy == "first" or depth == self.max_layers:
            return tuple(range(depth))
        if self.layer_policy == "importance":
            dropped = set(self.drop_order[: self.max_layers - depth])
            return tuple(i for i in range(self.max_layers) if i not in dropped)
        if depth == 1:
            return (0,)
        # "uniform": evenly spaced, always keeping the first and the last layer
        return tuple(int(round(i * (self.max_layers - 1) / (depth - 1))) for i in range(depth))

    # ---- validation -----------------------------------------------------------------
    def resolve(self, value: str | SubnetConfig | Any, source: str | None = None) -> SubnetConfig:
        """The sub-network `value` is or names, validated: a `SubnetConfig` (or a record carrying one,
        see `validate`), 'largest', 'smallest', inline JSON, a config file, or `FRONT.json#INDEX`
        (`source` names it in errors; default: the value itself, or "sub-network")."""
        if not isinstance(value, str):
            return self.validate(value, source or "sub-network")
        named = {"largest": self.largest, "smallest": self.smallest}
        if value in named:
            return named[value]
        return self.validate(read_subnet_arg(value), source or _describe_arg(value))

    def resolve_many(self, value: str, source: str | None = None) -> list[SubnetConfig]:
        """Like `resolve`, but a file may hold many configs (JSON lines, as `llamanas space sample` prints)."""
        if value in ("largest", "smallest") or "#" in value or value.lstrip().startswith("{"):
            return [self.resolve(value, source)]
        return [self.validate(c, source or value) for c in read_subnets(value)]

    def validate(self, cfg: SubnetConfig | Any, source: str = "sub-network") -> SubnetConfig:
        """Return `cfg` (canonical) if it belongs to this space, else raise `BadInputError`.

        A config that does not list its `layers` keeps the layers this space keeps at its depth
        (`kept_layers`: the first L in a `first` space, not in an `importance` one). A record that
        carries one as its `subnet` (a search's `FrontMember`) stands for that config.
        """
        cfg = getattr(cfg, "subnet", cfg)
        if cfg.num_layers not in self.depth_choices:
            raise BadInputError(
                f"{source}: num_layers {cfg.num_layers} is not in {_set(self.depth_choices)} (space {self.name})"
            )
        if cfg.layers is None:
            cfg = SubnetConfig(cfg.num_layers, cfg.intermediate_sizes, self.kept_layers(cfg.num_layers))
        for dim in self.layer_dims:
            for i, value in enumerate(getattr(cfg, dim.key)):
                if value not in dim.choices:
                    noun = dim.key.rstrip("s").replace("_", " ")
                    raise BadInputError(f"{source}: layer {i}: {noun} {value} is not in {_set(dim.choices)}")
        for layer in cfg.kept_layers:
            if layer >= self.max_layers:
                raise BadInputError(
                    f"{source}: layer index {layer} is out of range: the super-network has {self.max_layers} layers"
                )
        return cfg.canonical()

    # ---- integer encoding (pymoo) ---------------------------------------------------
    @property
    def encoding_upper_bounds(self) -> np.ndarray:
        """Inclusive upper bound of each gene; every lower bound is 0."""
        genes = [len(self.depth_choices) - 1]
        for dim in self.layer_dims:
            genes += [len(dim.choices) - 1] * self.max_layers
        return np.array(genes, dtype=np.int64)

    def encode(self, cfg: SubnetConfig) -> np.ndarray:
        """Gene 0 picks the depth; then `max_layers` genes per layer dimension (unused ones are 0)."""
        cfg = self.validate(cfg)
        if cfg.kept_layers != self.kept_layers(cfg.num_layers):
            raise BadInputError(
                f"sub-network keeps layers {list(cfg.kept_layers)}, which the '{self.layer_policy}' "
                f"layer policy of space {self.name} cannot encode"
            )
        genes = [self.depth_choices.index(cfg.num_layers)]
        for dim in self.layer_dims:
            idx = [dim.choices.index(v) for v in getattr(cfg, dim.key)]
            genes += idx + [0] * (self.max_layers - len(idx))
        return np.array(genes, dtype=np.int64)

    def decode(self, genes: np.ndarray) -> SubnetConfig:
        genes = np.asarray(genes)
        expected = len(self.encoding_upper_bounds)
        if genes.shape != (expected,):
            raise BadInputError(f"encoding has shape {genes.shape}, expected ({expected},)")
        genes = np.clip(np.rint(genes).astype(np.int64), 0, self.encoding_upper_bounds)
        depth = self.depth_choices[genes[0]]
        values = {}
        for k, dim in enumerate(self.layer_dims):
            start = 1 + k * self.max_layers
            values[dim.key] = tuple(dim.choices[g] for g in genes[start : start + depth])
        return SubnetConfig(depth, layers=self.kept_layers(depth), **values).canonical()

    # ---- sampling -------------------------------------------------------------------
    def sample(self, n: int, seed: int = 0, strategy: str = "stratified") -> list[SubnetConfig]:
        """`n` distinct sub-networks by one of `SAMPLING_STRATEGIES`."""
        check_choice(strategy, SAMPLING_STRATEGIES, "strategy")
        return self.sample_stratified(n, seed) if strategy == "stratified" else self.sample_random(n, seed)

    def sample_random(self, n: int, seed: int = 0) -> list[SubnetConfig]:
        """`n` distinct sub-networks: depth uniform, then every layer's width uniform."""
        rng = np.random.default_rng(seed)
        return self._take_unique(n, (self._random_one(rng) for _ in iter(int, 1)))

    def sample_stratified(self, n: int, seed: int = 0, width_bins: int = 4) -> list[SubnetConfig]:
        """`n` distinct sub-networks covering depth x total-width strata, smallest and largest first.

        Deterministic for a seed, and `sample_stratified(n)` is a prefix of `sample_stratified(n + k)`,
        so a profile can be extended later with the same seed.
        """
        return self._take_unique(n, self._iter_stratified(seed, width_bins))

    def _iter_stratified(self, seed: int, width_bins: int) -> Iterator[SubnetConfig]:
        rng = np.random.default_rng(seed)
        yield self.smallest
        yield self.largest
        strata = [(depth, b) for depth in self.depth_choices for b in range(width_bins)]
        while True:
            for i in rng.permutation(len(strata)):
                depth, b = strata[i]
                target = rng.uniform(b / width_bins, (b + 1) / width_bins)
                yield self._subnet_near(depth, target, rng)

    def _subnet_near(self, depth: int, target: float, rng: np.random.Generator) -> SubnetConfig:
        """Per-layer choices whose mean index fraction is `target` in expectation.

        Each layer's index is Binomial(top, target): the right mean, and every choice stays
        possible in every layer, so mixed layers (smallest next to largest) are sampled too.
        """
        values = {}
        for dim in self.layer_dims:
            idx = rng.binomial(len(dim.choices) - 1, target, size=depth)
            values[dim.key] = tuple(dim.choices[i] for i in idx)
        return SubnetConfig(depth, layers=self.kept_layers(depth), **values).canonical()

    def _random_one(self, rng: np.random.Generator) -> SubnetConfig:
        depth = self.depth_choices[rng.integers(len(self.depth_choices))]
        values = {d.key: tuple(d.choices[i] for i in rng.integers(len(d.choices), size=depth)) for d in self.layer_dims}
        return SubnetConfig(depth, layers=self.kept_layers(depth), **values).canonical()

    def _take_unique(self, n: int, stream: Iterator[SubnetConfig]) -> list[SubnetConfig]:
        n = min(n, self.num_distinct)
        seen: dict[str, SubnetConfig] = {}
        misses = 0
        for cfg in stream:
            if len(seen) >= n or misses > 10_000:
                break
            if cfg.id in seen:
                misses += 1
                continue
            seen[cfg.id] = cfg
            misses = 0
        return list(seen.values())

    # ---- super-network compatibility --------------------------------------------------
    def check_super_network(self, hf_config: Any, source: str) -> None:
        """Refuse a super-network whose shape does not match this space."""
        layers = getattr(hf_config, "num_hidden_layers", None)
        width = getattr(hf_config, "intermediate_size", None)
        if layers != self.max_layers or width != self.max_intermediate_size:
            raise BadInputError(
                f"{source}: super-network has {layers} layers and intermediate size {width}, but space "
                f"{self.name} expects {self.max_layers} layers and intermediate size {self.max_intermediate_size}"
            )


def _set(values: tuple[int, ...]) -> str:
    return "{" + ", ".join(str(v) for v in values) + "}"


def _describe_arg(value: str) -> str:
    """How an error names a sub-network argument: the file, or 'inline JSON' for JSON text."""
    return "inline sub-network JSON" if value.lstrip().startswith("{") else value


def builtin_spaces() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.json"))


def load_space(name_or_path: SearchSpace | str | Path) -> SearchSpace:
    """A built-in space by name (`tiny`, `llama2-7b-paper`) or a space JSON file; a `SearchSpace` as is.

    The one place a stage turns "a space or its name" into a space."""
    if isinstance(name_or_path, SearchSpace):
        return name_or_path
    path = BUILTIN_DIR / f"{name_or_path}.json"
    if not path.is_file():
        path = Path(name_or_path)
    if not path.is_file():
        raise BadInputError(
            f"space '{name_or_path}': no such built-in space ({', '.join(builtin_spaces())}) and no such file"
        )
    return space_from_dict(read_json(path, "space file"), str(path))


def space_from_dict(data: Any, source: str) -> SearchSpace:
    """Parse and validate a space description; every problem names `source`."""

    def fail(msg: str) -> BadInputError:
        return BadInputError(f"{source}: {msg}")

    if not isinstance(data, dict):
        raise fail("a search space must be a JSON object")
    allowed = {"schema_version", "name", "description", "super_network", "depth", "layer_dims", *DERIVED_KEYS}
    if set(data) - allowed:
        raise fail(f"unknown key(s) {sorted(set(data) - allowed)}; allowed: {sorted(allowed)}")
    if data.get("schema_version", SPACE_SCHEMA_VERSION) != SPACE_SCHEMA_VERSION:
        raise fail(f"schema_version {data['schema_version']} is not supported (expected {SPACE_SCHEMA_VERSION})")
    for key, inner in (("super_network", ("num_hidden_layers", "intermediate_size")), ("depth", ("choices",))):
        if not isinstance(data.get(key), dict) or not all(k in data[key] for k in inner):
            raise fail(f"{key} must be an object with {list(inner)}, got {data.get(key)!r}")
    if "name" not in data or "layer_dims" not in data:
        raise fail("missing field 'name' or 'layer_dims'")
    name, raw_dims = data["name"], data["layer_dims"]
    max_layers = _positive_int(data["super_network"]["num_hidden_layers"], "super_network.num_hidden_layers", fail,
                               MAX_LAYERS)  # fmt: skip
    max_width = _positive_int(data["super_network"]["intermediate_size"], "super_network.intermediate_size", fail,
                              MAX_INTERMEDIATE_SIZE)  # fmt: skip
    depth = _choices(data["depth"]["choices"], "depth.choices", fail)
    layer_policy = data["depth"].get("policy", "first")
    if not isinstance(name, str) or not name:
        raise fail("name must be a non-empty string")
    if layer_policy not in LAYER_POLICIES:
        raise fail(f"depth.policy '{layer_policy}' is not one of {list(LAYER_POLICIES)}")
    if max(depth) > max_layers:
        raise fail(f"depth choice {max(depth)} exceeds the super-network's {max_layers} layers")
    drop_order = _drop_order(data["depth"], layer_policy, max_layers, fail)
    if not isinstance(raw_dims, dict) or "intermediate_sizes" not in raw_dims:
        raise fail("layer_dims must be an object with at least 'intermediate_sizes'")
    dims = []
    for key, spec in raw_dims.items():
        if key not in SUPPORTED_LAYER_DIMS:
            raise fail(f"elastic dimension '{key}' is not supported (supported: {list(SUPPORTED_LAYER_DIMS)})")
        if not isinstance(spec, dict) or "choices" not in spec:
            raise fail(f"layer_dims.{key} must be an object with 'choices'")
        policy = spec.get("policy", "first")
        if policy not in NEURON_POLICIES:
            raise fail(f"layer_dims.{key}.policy '{policy}' is not one of {list(NEURON_POLICIES)}")
        dims.append(LayerDim(key, _choices(spec["choices"], f"layer_dims.{key}.choices", fail), policy))
    widths = next(d.choices for d in dims if d.key == "intermediate_sizes")
    if max(widths) > max_width:
        raise fail(f"intermediate size {max(widths)} exceeds the super-network's {max_width}")
    digits = math.log10(len(depth)) + max_layers * sum(math.log10(len(d.choices)) for d in dims)
    if digits >= MAX_POINT_DIGITS:
        raise fail(f"the space counts about 10^{int(digits)} points (depth choices x widths^layers); at most "
                   f"10^{MAX_POINT_DIGITS} are supported: give fewer width choices or layers")  # fmt: skip
    space = SearchSpace(
        name=name,
        max_layers=max_layers,
        max_intermediate_size=max_width,
        depth_choices=depth,
        layer_policy=layer_policy,
        layer_dims=tuple(dims),
        description=str(data.get("description", "")),
        drop_order=drop_order,
    )
    for key, value in space.derived().items():
        if key in data and data[key] != value:
            raise fail(
                f"{key} {data[key]!r} does not match the space described ({value!r}): the file was edited "
                f"after `llamanas space show --json` wrote it; remove {list(DERIVED_KEYS)} or fix the space"
            )
    return space


def _drop_order(depth: dict[str, Any], policy: str, max_layers: int, fail) -> tuple[int, ...]:
    """The `importance` policy's drop order: every layer index exactly once; no other policy has one."""
    unknown = set(depth) - {"choices", "policy", "drop_order"}
    if unknown:
        raise fail(f"depth: unknown key(s) {sorted(unknown)}; allowed: ['choices', 'drop_order', 'policy']")
    if policy != "importance":
        if "drop_order" in depth:
            raise fail(f"depth.drop_order is for the 'importance' policy, not '{policy}'")
        return ()
    order = depth.get("drop_order")
    if (
        not isinstance(order, list)
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in order)
        or sorted(order) != list(range(max_layers))
    ):
        raise fail(f"depth.drop_order must list every layer index 0..{max_layers - 1} once, got {order!r}")
    return tuple(order)


def _positive_int(value: Any, field: str, fail, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= maximum:
        raise fail(f"{field} must be a positive integer (at most {maximum:,}), got {value!r}")
    return value


def _choices(value: Any, field: str, fail) -> tuple[int, ...]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        raise fail(f"{field} must be a non-empty list of positive integers, got {value!r}")
    if len(set(value)) != len(value):
        raise fail(f"{field} has duplicates: {value}")
    return tuple(sorted(value))
