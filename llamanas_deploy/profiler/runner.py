"""`profile(model, space, settings, target=...)`: the sampling plan, resuming an interrupted profile, progress, summary.

The plan is `space.sample_stratified(samples, seed)`: smallest and largest first, then
depth x total-width strata; it is prefix-stable, so rerunning with more samples adds only
the new ones, and rerunning the same call after a crash measures only what is missing
(a record's key: sub-network, visit, model shape, backend, precision, device, threads, clock, shapes).
With `protocol.visits` > 1 the plan is measured that many times over, one whole pass after
the other, so each sub-network's visits lie minutes apart (`stats.Measurement.combine` and
`predict.dataset.combine_visits` make one figure of them).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
import typing
from typing import TYPE_CHECKING, Any, ContextManager, Iterator, Mapping, Sequence

from ..concepts import DEVICES, PROFILE_PRECISIONS, TIMED_FIGURES, WEIGHT_SOURCES, check_choice, check_threads
from ..errors import BadInputError
from ..model.families import ModelShape, read_shape
from ..progress import Callback, Progress, report
from ..shipped import shipped_profiles_dir
from ..space import SearchSpace, load_space
from ..subnet_config import SubnetConfig
from .backends import BACKENDS, get_backend
from .fingerprint import describe
from .load import pin_cpus, was_loaded
from .base import Backend, Shapes, check_clock
from .stats import Protocol
from .store import FINGERPRINT_FILE, SCHEMA_VERSION, ProfileWriter, current_fingerprint, read_profile, record_key

if TYPE_CHECKING:
    from ..model.supernet import SuperNetwork

DEFAULT_PROFILES_DIR = Path("hardware_profiles")


@dataclass(frozen=True)
class ProfileSettings:
    """How a profile is measured: backend, precision, device, plan size, threads, clock, workload, protocol."""

    backend: str = "torch"
    precision: str = "fp32"
    device: str = "cpu"
    samples: int = 100  # sub-networks in the plan
    seed: int = 0  # of the sampling plan and of random weights
    threads: int = 1  # fixed intra-op thread count
    weights: str = "auto"  # the checkpoint's weights when the model has them, else random from config.json
    clock: str = "wall"
    shapes: Shapes = field(default_factory=Shapes)
    protocol: Protocol = field(default_factory=lambda: Protocol(visits=3))
    anchor_every: int = 5  # the drift reference (`SearchSpace.anchor`) after every this many visits; 0: never
    pin_cpus: tuple[int, ...] = ()  # the CPUs the measuring process is fixed to; (): where the OS puts it

    def __post_init__(self) -> None:
        check_choice(self.backend, sorted(BACKENDS), "backend")
        check_choice(self.precision, PROFILE_PRECISIONS, "precision")
        check_choice(self.device, DEVICES, "device")
        check_choice(self.weights, WEIGHT_SOURCES, "weights")
        for name in ("samples", "threads"):
            _check_positive_int(getattr(self, name), name)
        if not isinstance(self.anchor_every, int) or isinstance(self.anchor_every, bool) or self.anchor_every < 0:
            raise BadInputError(f"must be a non-negative integer, got {self.anchor_every!r}", param="anchor_every")
        if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in self.pin_cpus):
            raise BadInputError(f"must be CPU numbers, got {self.pin_cpus!r}", param="pin_cpus")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise BadInputError(f"must be an integer, got {self.seed!r}", param="seed")
        if not isinstance(self.shapes, Shapes):
            raise BadInputError(f"must be a Shapes, got {type(self.shapes).__name__}", param="shapes")
        if not isinstance(self.protocol, Protocol):
            raise BadInputError(f"must be a Protocol, got {type(self.protocol).__name__}", param="protocol")
        check_clock(self.clock, self.device, self.threads)
        backend = get_backend(self.backend)
        backend.check_supported(self.device, self.precision)
        backend.check_shapes(self.shapes)

    def setup(self) -> dict[str, Any]:
        """The fields every record and the summary repeat."""
        return {"backend": self.backend, "precision": self.precision, "device": self.device, "threads": self.threads,
                "clock": self.clock, "shapes": self.shapes.to_dict()}  # fmt: skip


def _check_positive_int(value: Any, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadInputError(f"must be a positive integer, got {value!r}", param=name)


@dataclass(frozen=True)
class ProfileResult:
    """What one `profile` call did, and what the profile now holds for its setup (in `directory`)."""

    directory: Path
    target: str
    settings: ProfileSettings
    fingerprint_id: str
    space_id: str
    planned: int  # visits in the plan
    measured_now: int
    records: int  # records of this setup in the profile
    subnets: int
    flagged: int
    loaded: int  # of `records`, measured while other processes or the hypervisor took CPU time (`load`)
    anchors: int  # measurements of the drift reference in the profile, this setup
    anchor_drift_pct: float | None  # their decode figure's range, % of the lowest: how much the machine's speed moved
    median_cv: dict[str, float | None]
    wall_s: float
    dropped_torn_bytes: int  # a half-written last record cut off on opening

    def to_dict(self) -> dict[str, Any]:
        setup = self.settings.setup()
        return {
            "target": self.target,
            "out": str(self.directory),
            "fingerprint_id": self.fingerprint_id,
            "space_id": self.space_id,
            **{k: setup[k] for k in ("backend", "precision", "device", "threads", "clock", "shapes")},
            "planned": self.planned,
            "measured_now": self.measured_now,
            "already_present": self.planned - self.measured_now,
            "records": self.records,
            "subnets": self.subnets,
            "flagged": self.flagged,
            "loaded": self.loaded,
            "anchors": self.anchors,
            "anchor_drift_pct": self.anchor_drift_pct,
            "median_cv": self.median_cv,
            "wall_s": self.wall_s,
            "dropped_torn_bytes": self.dropped_torn_bytes,
        }


def profile(
    supernet: "SuperNetwork | str | Path",
    space: SearchSpace | str | Path,
    settings: ProfileSettings = ProfileSettings(),
    *,
    target: str,
    out: str | Path | None = None,
    callback: Callback = None,
    node: Node | None = None,
    plan: Sequence[SubnetConfig] | None = None,
) -> ProfileResult:
    """Measure the planned sub-networks that the profile of `target` does not hold yet.

    `supernet` is a loaded `SuperNetwork` (its source directory and shape are used; latency does
    not depend on weight values, and one sub-network at a time is built from the source), a
    checkpoint directory, its `config.json`, or a built-in name. The profile goes to `out`
    (default `hardware_profiles/<target>`); `callback` receives one event per visit measured.
    `node` (`cluster.RayNode(resource)`) measures on another machine of a Ray cluster: the
    fingerprint is taken there, and the records come back here to be appended. `plan`: these
    sub-networks instead of the space's sampling plan (`settings.samples` and `seed` then unused).
    Every `settings.anchor_every` visits, and before the first and after the last, the space's
    anchor sub-network is measured too (records with `"role": "anchor"`), so that a fit can
    cancel the machine's drift in speed over the profile (`predict.dataset`).
    """
    check_target_name(target)
    source, shape = _model_source(supernet)
    space = load_space(space)
    space.check_super_network(shape, str(source))
    get_backend(settings.backend).validate(settings.device, settings.precision)
    out_dir = Path(out) if out is not None else DEFAULT_PROFILES_DIR / target
    started = time.perf_counter()
    with node.open(source, settings) if node is not None else nullcontext(Measurer(source, settings)) as measurer:
        fingerprint = measurer.fingerprint()
        common = {"schema_version": SCHEMA_VERSION, "target": target, "fingerprint_id": fingerprint["fingerprint_id"],
                  "space_id": space.id, "model_id": shape.id, **settings.setup()}  # fmt: skip
        with ProfileWriter.open(out_dir, target, fingerprint) as writer:
            subnets = space.sample_stratified(settings.samples, settings.seed) if plan is None else list(plan)
            visits = [(visit, cfg) for visit in range(settings.protocol.visits) for cfg in subnets]
            todo = [(v, cfg) for v, cfg in visits if not writer.has(common | {"subnet_id": cfg.id, "visit": v})]
            # anchor indices continue from the profile's record count, so a resumed profile's stay unique
            schedule = with_anchors(todo, space.anchor, settings.anchor_every, first_index=len(writer.keys))
            done, total = len(visits) - len(todo), len(visits) - len(todo) + len(schedule)
            if todo:
                report(callback, "profile", done, total, "visit", status="warming up")
            for record in measurer.records(schedule, common):
                writer.append(record)
                done += 1
                report(callback, "profile", done, total, "visit", status=_last(record))
    return _result(out_dir, settings, common, len(visits), len(todo), time.perf_counter() - started, writer.dropped_bytes)


def with_anchors(todo: list[tuple[int, SubnetConfig]], anchor: SubnetConfig, every: int,
                 first_index: int) -> list[tuple[int, SubnetConfig, int | None]]:  # fmt: skip
    """`todo` as (visit, sub-network, None), with (0, anchor, index) before it, after every `every`
    visits and at its end; nothing added when `every` is 0 or there is nothing to do."""
    if not every or not todo:
        return [(visit, cfg, None) for visit, cfg in todo]
    schedule: list[tuple[int, SubnetConfig, int | None]] = []
    for start in range(0, len(todo), every):
        schedule.append((0, anchor, first_index + len(schedule)))
        schedule += [(visit, cfg, None) for visit, cfg in todo[start : start + every]]
    schedule.append((0, anchor, first_index + len(schedule)))
    return schedule


def profile_fleet(
    supernet: "SuperNetwork | str | Path",
    space: SearchSpace | str | Path,
    settings: ProfileSettings = ProfileSettings(),
    *,
    targets: Mapping[str, Node],
    out: str | Path = DEFAULT_PROFILES_DIR,
    callback: Callback = None,
) -> list[ProfileResult]:
    """Profile every target at once, each on its node (`{target: RayNode(resource)}`), each into
    `out/<target>`. One target failing does not stop the others; its error is raised after."""
    from concurrent.futures import ThreadPoolExecutor

    for name in targets:
        check_target_name(name)
    progress = _FleetProgress(callback)
    with ExitStack() as connections, ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        for node in targets.values():  # held for the whole fleet, not opened and closed by each target
            connections.enter_context(node.connection())
        futures = [
            pool.submit(profile, supernet, space, settings, target=name, out=Path(out) / name,
                        callback=progress.for_target(name), node=node)  # fmt: skip
            for name, node in targets.items()
        ]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]
    return [f.result() for f in futures]


class _FleetProgress:
    """One progress line for several targets measured at once: visits summed, the last status named."""

    def __init__(self, callback: Callback):
        self.callback, self.lock, self.state = callback, threading.Lock(), {}

    def for_target(self, target: str) -> Callback:
        def forward(event: Progress) -> None:
            with self.lock:
                self.state[target] = (event.done, event.total or 0)
                done, total = (sum(v[i] for v in self.state.values()) for i in (0, 1))
                status = f"{target}: {event.status}" if event.status else ""
                report(self.callback, event.stage, done, total, event.unit, event.message, status)

        return None if self.callback is None else forward


class Node(typing.Protocol):  # an interface (`stats.Protocol` is the measuring protocol)
    """Where a profile is measured when not here (`cluster.RayNode`): `open(source, settings)` gives a
    measurer like `Measurer`, living on that machine for the block."""

    def open(self, source: str | Path, settings: ProfileSettings) -> ContextManager[Measurer]: ...

    def connection(self) -> ContextManager[Any]:
        """The cluster's connection, held across several `open`s (a fleet)."""


class Measurer:
    """Measures visits with the settings' backend on the machine it lives on (here, or a Ray node)."""

    def __init__(self, source: str | Path, settings: ProfileSettings):
        check_threads(settings.threads)  # against the cores of the machine that measures, not the driver's
        self.settings = settings
        self.pinned = pin_cpus(settings.pin_cpus) if settings.pin_cpus else None
        self.backend: Backend = get_backend(settings.backend)(
            source, settings.precision, settings.device, settings.threads, settings.weights, settings.seed,
            settings.clock,
        )
        self._fingerprint = current_fingerprint()  # after the backend fixed the thread count, which it records

    def fingerprint(self) -> dict[str, Any]:
        return self._fingerprint

    def records(self, schedule: list[tuple[int, SubnetConfig, int | None]], common: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """One record per (visit, sub-network, anchor index or None) of `with_anchors`, in order, each as
        soon as it is measured."""
        if not schedule:
            return
        settings = self.settings
        self.backend.warm_up(schedule[0][1], settings.shapes)
        for visit, cfg, anchor_index in schedule:
            started = time.perf_counter()
            measured = self.backend.measure(cfg, settings.shapes, settings.protocol)
            yield (
                common
                | {"subnet": cfg.to_dict(), "subnet_id": cfg.id, "visit": visit, "protocol": settings.protocol.to_dict()}
                | ({"role": "anchor", "anchor_index": anchor_index} if anchor_index is not None else {})
                | ({"pinned_cpus": list(self.pinned)} if self.pinned else {})
                | measured.to_dict()
                | {"measure_s": round(time.perf_counter() - started, 3),
                   "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
            )


def check_target_name(name: str) -> str:
    """`name` if it can name a profile directory: letters, digits, '-', '_' and '.', not starting with '.'."""
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise BadInputError(f"{name!r}: use letters, digits, '-', '_' and '.' only", param="target")
    return name


def target_name_from(text: str) -> str:
    """A valid target name made of `text` (a directory's name, say): other characters become '-'."""
    name = "".join(c if c.isalnum() or c in "-_." else "-" for c in text).lstrip(".")
    return check_target_name(name or "unnamed")


def _model_source(model: "SuperNetwork | str | Path") -> tuple[str | Path, ModelShape]:
    """Where the backends build sub-networks from, and the model's shape."""
    if isinstance(model, (str, Path)):
        return model, read_shape(model)
    return model.source, model.shape


def _last(record: dict[str, Any]) -> str:
    flag = " FLAGGED" if record["flagged"] else ""
    flag += " LOADED" if was_loaded(record) else ""
    role = "anchor " if record.get("role") == "anchor" else ""
    prefill, decode, rate = (record[name] for name in ("prefill_ms", "decode_ms", "throughput_tok_s"))
    return (
        f"{role}{record['subnet']['num_layers']}L prefill {prefill['median']:.1f}ms decode {decode['median']:.2f}ms "
        f"{rate['median']:.0f} tok/s cv {prefill['cv']:.2f}/{decode['cv']:.2f}{flag}"
    )


def _result(out_dir: Path, settings: ProfileSettings, common, planned: int, measured_now: int, wall_s: float,
            dropped: int) -> ProfileResult:  # fmt: skip
    profile_read = read_profile(out_dir)
    same_setup = _of_setup(profile_read.records, common)
    anchor_decode = [r.value("decode_ms") for r in _of_setup(profile_read.anchors, common)]
    median_cv = {
        name: statistics.median(r.raw[name]["cv"] for r in same_setup) if same_setup else None for name in TIMED_FIGURES
    }
    return ProfileResult(
        directory=out_dir,
        target=common["target"],
        settings=settings,
        fingerprint_id=common["fingerprint_id"],
        space_id=common["space_id"],
        planned=planned,
        measured_now=measured_now,
        records=len(same_setup),
        subnets=len({r.raw["subnet_id"] for r in same_setup}),
        flagged=sum(r.flagged for r in same_setup),
        loaded=sum(r.loaded for r in same_setup),
        anchors=len(anchor_decode),
        anchor_drift_pct=round(100 * (max(anchor_decode) / min(anchor_decode) - 1), 1) if anchor_decode else None,
        median_cv=median_cv,
        wall_s=round(wall_s, 2),
        dropped_torn_bytes=dropped,
    )


def _of_setup(records: list, common: dict[str, Any]) -> list:
    """The records measured with `common`'s setup: their key is the one this run would give them."""
    return [r for r in records if r.key == record_key(common | _identity(r.raw))]


def _identity(raw: dict[str, Any]) -> dict[str, Any]:
    return {"subnet_id": raw["subnet_id"], "visit": raw.get("visit", 0),
            **{k: raw[k] for k in ("role", "anchor_index") if k in raw}}  # fmt: skip


def profiles_dir() -> Path:
    """`hardware_profiles/` in the working directory if it exists, else the shipped profiles."""
    return DEFAULT_PROFILES_DIR if DEFAULT_PROFILES_DIR.is_dir() else shipped_profiles_dir()


def list_targets(directory: str | Path | None = None) -> list[dict[str, Any]]:
    """The hardware profiles in `directory` (one sub-directory per target; default `profiles_dir()`):
    device, setups, record counts."""
    directory = Path(directory) if directory is not None else profiles_dir()
    if not directory.is_dir():
        raise BadInputError(f"{directory}: no such directory", param="directory")
    return [_describe_profile(path) for path in sorted(directory.iterdir()) if (path / FINGERPRINT_FILE).is_file()]


def _describe_profile(path: Path) -> dict[str, Any]:
    prof = read_profile(path)
    setups = Counter(f"{r.backend}/{r.precision}/{r.raw['device']}" for r in prof.records)
    return {
        "target": prof.target,
        "path": str(path),
        "fingerprint_id": prof.fingerprint["fingerprint_id"],
        "device": describe(prof.fingerprint["device"]),
        "records": len(prof.records),
        "flagged": sum(r.flagged for r in prof.records),
        "setups": dict(setups),
        "spaces": sorted({r.space_id for r in prof.records}),
    }
