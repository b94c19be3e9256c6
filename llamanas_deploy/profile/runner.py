"""`llamanas profile`: the sampling plan, resuming an interrupted profile, progress, summary.

The plan is `space.sample_stratified(samples, seed)`: smallest and largest first, then
depth x total-width strata; it is prefix-stable, so rerunning with more samples adds only
the new ones, and rerunning the same command after a crash measures only what is missing
(a record's key: sub-network, visit, model shape, backend, precision, device, threads, clock, shapes).
With `protocol.visits` > 1 the plan is measured that many times over, one whole pass after
the other, so each sub-network's visits lie minutes apart (`stats.Measurement.combine` and
`predict.dataset.combine_visits` make one figure of them).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..model.families import read_shape
from ..space import load_space
from .backends import get_backend
from .base import Backend, Shapes, SubnetMeasurement
from .stats import Protocol
from .store import FIGURES, SCHEMA_VERSION, ProfileWriter, current_fingerprint, read_profile, record_key

DEFAULT_PROFILES_DIR = Path("hardware_profiles")


@dataclass(frozen=True)
class ProfileRequest:
    """Everything one `llamanas profile` run needs."""

    target: str
    model: str = "tiny"
    space: str = "tiny"
    backend: str = "torch"
    precision: str = "fp32"
    device: str = "cpu"
    samples: int = 100
    seed: int = 0
    threads: int = 1
    weights: str = "auto"
    clock: str = "wall"
    shapes: Shapes = field(default_factory=Shapes)
    protocol: Protocol = field(default_factory=Protocol)
    out: Path | None = None

    @property
    def out_dir(self) -> Path:
        return self.out if self.out is not None else DEFAULT_PROFILES_DIR / self.target


def run_profile(request: ProfileRequest, progress: bool = True) -> dict[str, Any]:
    """Measure the planned sub-networks that the profile does not hold yet; return a summary."""
    space = load_space(request.space)
    shape = read_shape(request.model)
    space.check_super_network(shape, str(request.model))
    backend_class = get_backend(request.backend)
    backend_class.validate(request.device, request.precision)
    backend = backend_class(
        request.model, request.precision, request.device, request.threads, request.weights, request.seed, request.clock
    )
    fingerprint = current_fingerprint()  # after the backend fixed the thread count, which it records
    common = {
        "schema_version": SCHEMA_VERSION,
        "target": request.target,
        "fingerprint_id": fingerprint["fingerprint_id"],
        "space_id": space.id,
        "model_id": _model_id(asdict(shape)),
        "backend": request.backend,
        "precision": request.precision,
        "device": request.device,
        "threads": request.threads,
        "clock": request.clock,
        "shapes": request.shapes.to_dict(),
    }
    started = time.perf_counter()
    with ProfileWriter.open(request.out_dir, request.target, fingerprint) as writer:
        plan = space.sample_stratified(request.samples, request.seed)
        visits = [(visit, cfg) for visit in range(request.protocol.visits) for cfg in plan]
        todo = [(visit, cfg) for visit, cfg in visits if not writer.has(common | {"subnet_id": cfg.id, "visit": visit})]
        _measure_all(backend, todo, len(visits), common, request, writer, progress)
    summary = _summary(request, common, len(visits), len(todo), time.perf_counter() - started)
    return summary | {"dropped_torn_bytes": writer.dropped_bytes}


def _measure_all(backend: Backend, todo, planned: int, common, request, writer: ProfileWriter, progress: bool) -> None:
    from tqdm import tqdm

    if not todo:
        return
    bar = tqdm(total=planned, initial=planned - len(todo), desc=f"profile {request.target}", unit="visit",
               file=sys.stderr, disable=not progress, dynamic_ncols=True)  # fmt: skip
    with bar:
        bar.set_postfix_str("warming up")
        backend.warm_up(todo[0][1], request.shapes)
        for visit, cfg in todo:
            measured = backend.measure(cfg, request.shapes, request.protocol)
            writer.append(
                common
                | {"subnet": cfg.to_dict(), "subnet_id": cfg.id, "visit": visit, "protocol": request.protocol.to_dict()}
                | measured.to_dict()
                | {"timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            )
            bar.set_postfix_str(_last(cfg.num_layers, measured))
            bar.update()


def _last(layers: int, m: SubnetMeasurement) -> str:
    flag = " FLAGGED" if m.flagged else ""
    return (
        f"{layers}L prefill {m.prefill_ms.spread.median:.1f}ms decode {m.decode_ms.spread.median:.2f}ms "
        f"{m.throughput_tok_s.spread.median:.0f} tok/s "
        f"cv {m.prefill_ms.spread.cv:.2f}/{m.decode_ms.spread.cv:.2f}{flag}"
    )


def _summary(request: ProfileRequest, common, planned: int, measured_now: int, wall_s: float) -> dict[str, Any]:
    profile = read_profile(request.out_dir)
    same_setup = [r for r in profile.records if r.key == record_key(common | _identity(r.raw))]
    return {
        "target": request.target,
        "out": str(request.out_dir),
        "fingerprint_id": common["fingerprint_id"],
        "space_id": common["space_id"],
        "backend": request.backend,
        "precision": request.precision,
        "device": request.device,
        "threads": request.threads,
        "clock": request.clock,
        "shapes": common["shapes"],
        "planned": planned,
        "measured_now": measured_now,
        "already_present": planned - measured_now,
        "records": len(same_setup),
        "subnets": len({r.raw["subnet_id"] for r in same_setup}),
        "flagged": sum(r.flagged for r in same_setup),
        "median_cv": {
            name: statistics.median(r.raw[name]["cv"] for r in same_setup) if same_setup else None for name in FIGURES
        },
        "wall_s": round(wall_s, 2),
    }


def _identity(raw: dict[str, Any]) -> dict[str, Any]:
    return {"subnet_id": raw["subnet_id"], "visit": raw.get("visit", 0)}


def _model_id(shape: dict[str, Any]) -> str:
    """Hash of the model's shape: the same sub-network of another model is another measurement."""
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:12]
