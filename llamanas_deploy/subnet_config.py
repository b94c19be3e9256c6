"""The sub-network config record: which layers are kept and how wide each kept MLP is.

JSON contract (see the design brief)::

    {"num_layers": L, "intermediate_sizes": [s_1, ..., s_L]}           # the layers the space keeps at depth L
    {"num_layers": L, "intermediate_sizes": [...], "layers": [i_1, ...]}  # these layers

Without `layers`, `SearchSpace.validate` fills in the space's layers for that depth: the first L
in a `first` space, the L most important in an `importance` one. A config written out drops
`layers` when they are the first L (`canonical`), so in a space that keeps other layers the
first L are not a config of their own: only the space's layers are.

Anything else is rejected with a message that says what was expected and what came.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import BadInputError
from .jsonfiles import parse_json, read_json, read_text

CONFIG_KEYS = ("num_layers", "intermediate_sizes", "layers")


@dataclass(frozen=True)
class SubnetConfig:
    num_layers: int
    intermediate_sizes: tuple[int, ...]
    layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if len(self.intermediate_sizes) != self.num_layers:
            raise BadInputError(
                f"intermediate_sizes has {len(self.intermediate_sizes)} entries, "
                f"expected num_layers = {self.num_layers}"
            )
        if self.layers is not None:
            if len(self.layers) != self.num_layers:
                raise BadInputError(
                    f"layers has {len(self.layers)} entries, expected num_layers = {self.num_layers}"
                )
            if list(self.layers) != sorted(set(self.layers)) or min(self.layers, default=0) < 0:
                raise BadInputError(f"layers must be distinct, increasing and >= 0, got {list(self.layers)}")

    @property
    def kept_layers(self) -> tuple[int, ...]:
        """Indices of the super-network layers this sub-network keeps, in order."""
        return self.layers if self.layers is not None else tuple(range(self.num_layers))

    def canonical(self) -> "SubnetConfig":
        """The same sub-network with `layers` dropped when it only says 'the first L'."""
        if self.layers is not None and self.layers == tuple(range(self.num_layers)):
            return SubnetConfig(self.num_layers, self.intermediate_sizes)
        return self

    def to_dict(self) -> dict[str, Any]:
        cfg = self.canonical()
        out: dict[str, Any] = {"num_layers": cfg.num_layers, "intermediate_sizes": list(cfg.intermediate_sizes)}
        if cfg.layers is not None:
            out["layers"] = list(cfg.layers)
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(", ", ": "))

    @property
    def id(self) -> str:
        """Stable 12-hex-digit id: the same sub-network always gets the same id."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @classmethod
    def from_dict(cls, data: Any, source: str = "sub-network config") -> "SubnetConfig":
        if not isinstance(data, dict):
            raise BadInputError(f"{source}: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(CONFIG_KEYS))
        if unknown:
            raise BadInputError(f"{source}: unknown key(s) {unknown}; allowed: {list(CONFIG_KEYS)}")
        for key in ("num_layers", "intermediate_sizes"):
            if key not in data:
                raise BadInputError(f"{source}: missing key '{key}'")
        num_layers = data["num_layers"]
        if not _is_int(num_layers) or num_layers < 1:
            raise BadInputError(f"{source}: num_layers must be a positive integer, got {num_layers!r}")
        sizes = _int_list(data["intermediate_sizes"], "intermediate_sizes", source)
        layers = data.get("layers")
        layers = None if layers is None else tuple(_int_list(layers, "layers", source))
        try:
            return cls(num_layers, tuple(sizes), layers)
        except BadInputError as err:
            raise BadInputError(f"{source}: {err}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "sub-network config") -> "SubnetConfig":
        return cls.from_dict(parse_json(text, source), source)

    @classmethod
    def from_file(cls, path: str | Path) -> "SubnetConfig":
        return cls.from_json(read_text(path, "sub-network config"), str(path))


def read_subnets(path: str | Path) -> list[SubnetConfig]:
    """Read one config (a JSON object) or many (JSON lines, as `llamanas space sample` prints)."""
    text = read_text(path, "sub-network configs")
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if len(lines) > 1 and all(line.lstrip().startswith("{") and line.rstrip().endswith("}") for _, line in lines):
        return [SubnetConfig.from_json(line, f"{path}:{i}") for i, line in lines]
    return [SubnetConfig.from_json(text, str(path))]


def read_subnet_arg(value: str) -> SubnetConfig:
    """What a `--subnet` option names: inline JSON, a config file, or `FRONT.json#INDEX`.

    A front file (written by `llamanas search`) is `{"front": [{"subnet": {...}, ...}, ...], ...}`;
    a plain JSON list of configs is indexed the same way.
    """
    if value.lstrip().startswith("{"):
        return SubnetConfig.from_json(value, "inline sub-network JSON")
    path, _, index = value.partition("#")
    if not index:
        return SubnetConfig.from_file(path)
    if not (index.isascii() and index.isdigit()):
        raise BadInputError(f"{value}: the part after '#' must be an index into the front, got '{index}'")
    data = read_json(path, "front file")
    entries = data.get("front") if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise BadInputError(f"{path}: expected a front file with a 'front' list, or a JSON list of configs")
    if int(index) >= len(entries):
        raise BadInputError(f"{value}: index {index} is out of range: the front has {len(entries)} entries")
    entry = entries[int(index)]
    if isinstance(entry, dict) and "subnet" in entry:
        entry = entry["subnet"]
    return SubnetConfig.from_dict(entry, f"{value}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_list(value: Any, key: str, source: str) -> list[int]:
    if not isinstance(value, list) or not all(_is_int(v) for v in value):
        raise BadInputError(f"{source}: {key} must be a list of integers, got {value!r}")
    return list(value)


def unique(configs: Iterable[SubnetConfig]) -> list[SubnetConfig]:
    """Configs in order, each canonical sub-network once."""
    seen: set[str] = set()
    out = []
    for cfg in configs:
        if cfg.id not in seen:
            seen.add(cfg.id)
            out.append(cfg.canonical())
    return out
