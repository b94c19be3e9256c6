"""The ledger of real evaluations: `evaluations.jsonl`, one sub-network per line, appended as measured.

It is the search's cache and its memory: a sub-network already in the ledger is never measured
again, so a search killed mid-way and started again replays from the ledger for free and
resumes measuring exactly where it stopped. The expensive measures are taken here, one
sub-network at a time, or by an `Evaluate` function (Ray workers, `cluster.RayWorkers`) that
yields each sub-network's values as they come; the ledger appends each one once, in the order
they arrive, and stays the only record.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..errors import BadInputError, LlamanasError
from ..jsonfiles import checked_integer, dumps, field_error, is_finite_number, parse_json, read_text, write_text
from ..space import SearchSpace
from ..subnet_config import SubnetConfig
from .objectives import Objective

LEDGER_SCHEMA_VERSION = 1

# (expensive measures, configs) -> (config, {measure name: value}) for each config, in any order
Evaluate = Callable[[Sequence[Objective], Sequence[SubnetConfig]], Iterator[tuple[SubnetConfig, dict[str, float]]]]


def evaluate_here(measures: Sequence[Objective], configs: Sequence[SubnetConfig]):
    """The expensive measures taken in this process, one sub-network at a time."""
    for cfg in configs:
        yield cfg, {m.name: float(m.evaluate([cfg])[0]) for m in measures}


class Ledger:
    def __init__(
        self, path: str | Path, space: SearchSpace, measures: Sequence[Objective], evaluate: Evaluate = evaluate_here
    ):
        self.path = Path(path)
        self.space = space
        self.measures = list(measures)
        self.evaluate = evaluate
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, subnet_id: str) -> bool:
        return subnet_id in self.records

    def values(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        """(len(configs), len(measures)) matrix of recorded values, in `measures` order."""
        return np.array([[self.records[c.id]["values"][m.name] for m in self.measures] for c in configs], float)

    def measure(self, configs: Sequence[SubnetConfig], on_measured: Callable[[int], None] | None = None) -> int:
        """Measure and append the configs not yet in the ledger; returns how many were new.

        `on_measured(k)` is called after the k-th new one is appended."""
        new = [c for c in dict((c.id, c) for c in configs).values() if c.id not in self.records]
        if not new:
            return 0
        cheap = {m.name: m.evaluate(new) for m in self.measures if not m.expensive}
        row = {cfg.id: i for i, cfg in enumerate(new)}
        expensive = [m for m in self.measures if m.expensive]
        for done, (cfg, values) in enumerate(self.evaluate(expensive, new), 1):
            if cfg.id not in row or cfg.id in self.records:
                raise LlamanasError(f"sub-network {cfg.id}: an evaluation nobody asked for, or one made twice")
            self._append(cfg, {name: float(v[row[cfg.id]]) for name, v in cheap.items()} | values)
            if on_measured is not None:
                on_measured(done)
        return len(new)

    def _append(self, cfg: SubnetConfig, values: dict[str, float]) -> None:
        bad = {name: v for name, v in values.items() if not math.isfinite(v)}
        if bad:
            raise LlamanasError(f"sub-network {cfg.id}: measured {bad}; the ledger keeps finite numbers only")
        record = {
            "schema_version": LEDGER_SCHEMA_VERSION,
            "space_id": self.space.id,
            "index": len(self.records),
            "subnet_id": cfg.id,
            "subnet": cfg.to_dict(),
            "values": values,
        }
        with open(self.path, "a") as f:
            f.write(dumps(record, indent=None) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[cfg.id] = record

    def _load(self) -> None:
        text = read_text(self.path, "search ledger")
        lines = text.split("\n")
        names = {m.name for m in self.measures}
        for number, line in enumerate(lines[:-1], 1):  # every whole line checked before anything is changed
            self._load_line(line, f"{self.path}:{number}", names)
        if lines[-1]:
            # the last write was cut short by a kill: that one evaluation is lost, the rest is kept
            write_text(self.path, "\n".join(lines[:-1] + [""]))

    def _load_line(self, line: str, where: str, names: set[str]) -> None:
        record = parse_json(line, where)
        if not isinstance(record, dict) or record.get("space_id") != self.space.id:
            raise BadInputError(f"{where}: expected an evaluation record of space {self.space.id}")
        cfg = self.space.validate(SubnetConfig.from_dict(record.get("subnet"), where), where)
        values = record.get("values")
        if not isinstance(values, dict) or not names <= set(values):
            raise BadInputError(f"{where}: expected values for {sorted(names)}, got {values!r}")
        for name in sorted(names):
            if not is_finite_number(values[name]):
                raise field_error(where, f"values.{name}", "a finite number", values[name])
        checked_integer(record.get("index"), where, "index", minimum=0)
        if record.get("subnet_id") != cfg.id:
            raise BadInputError(f"{where}: subnet_id {record.get('subnet_id')!r} does not match its config ({cfg.id})")
        self.records[cfg.id] = record
