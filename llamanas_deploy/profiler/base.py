"""The backend interface: a backend says how to run one sub-network; the base measures it.

A backend subclass implements five things, and nothing about timing or statistics:

    class MyBackend(Backend):
        name = "my-backend"
        precisions = ("fp32",)
        devices = ("cpu",)

        @classmethod
        def check_available(cls, device, precision): ...  # raise BackendUnavailable if it cannot run here
        def load(self, subnet) -> int: ...                 # build/compile the sub-network; return model bytes
        def prefill(self, shapes) -> Workload: ...         # one prompt of shapes.prompt_len tokens
        def decode(self, shapes) -> Workload: ...          # one token with a KV cache of context_len tokens
        def generate(self, shapes) -> Workload: ...        # prompt, then gen_len tokens at batch_size
        def unload(self): ...                              # drop the sub-network (one in memory at a time)

then adds one line to `backends.BACKENDS` (and overrides `check_shapes` when it cannot run some
shapes on any machine: refused with the settings, before anything is built). A `Workload` is `run`
(timed) plus an optional `reset` (untimed, called before every run — e.g. cut the KV cache back to
`context_len` so every decode step sees the same cache). `Backend.measure(subnet, shapes, protocol)`
owns the rest: warm-up, repeats, re-measuring noisy figures (`stats`), peak memory, and
the figures of one record. Devices other than the CPU override `synchronize` (wait for
queued work before a clock is read), or `time_ms` and `memory_probe` as a whole.
Timing uses `self.clock`: "wall" by default; "cpu" = the calling thread's CPU time (one
thread only), for a machine shared with other jobs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..analytics import bandwidth_fraction
from ..concepts import CLOCKS, check_choice
from ..errors import BadInputError
from ..subnet_config import SubnetConfig
from .load import LoadMeter, MachineLoad
from .stats import Measurement, Protocol, measure

MIB = 1024**2
# "wall": elapsed time, the protocol's clock. "cpu": CPU time of the calling thread, which with
# one intra-op thread is where all the work runs; on a machine shared with other jobs it leaves
# out the time the thread was waiting for a core (the median then matches a quiet machine's wall time).
CLOCK_READERS = {"wall": time.perf_counter, "cpu": time.thread_time}  # keys: concepts.CLOCKS


class BackendUnavailable(BadInputError):
    """The backend cannot run on this machine (missing package, no such device)."""


def check_clock(clock: str, device: str, threads: int) -> None:
    """Refuse a clock the setting cannot use: the thread's CPU time sees one CPU thread only."""
    check_choice(clock, CLOCKS, "clock")
    if clock == "cpu" and (device != "cpu" or threads != 1):
        raise BadInputError(
            f"cpu measures the calling thread's CPU time: it needs device cpu and threads 1, "
            f"got device {device}, threads {threads}",
            param="clock",
        )


@dataclass(frozen=True)
class Shapes:
    """The workload's sizes: batch, prompt (prefill), cached context (decode), generated tokens."""

    batch_size: int = 1
    prompt_len: int = 128
    context_len: int = 128
    gen_len: int = 32

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, int) or value < 1:
                raise BadInputError(f"must be a positive integer, got {value!r}", param=name)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


SHAPE_FIELDS = tuple(f.name for f in fields(Shapes))


@dataclass(frozen=True)
class Workload:
    """`run` is timed; `reset`, when given, runs untimed before every `run`."""

    run: Callable[[], Any]
    reset: Callable[[], None] | None = None


@dataclass(frozen=True)
class SubnetMeasurement:
    """The figures of one sub-network, as they go into its record."""

    prefill_ms: Measurement
    decode_ms: Measurement
    throughput_tok_s: Measurement
    peak_mem_mib: float
    model_bytes: int
    weights: str
    # backend-specific record fields (`Backend.record_extra`); with `decode_bytes_per_step` and
    # `peak_bandwidth_gb_s` the record also gets `decode_bandwidth_fraction`
    extra: dict[str, Any] = field(default_factory=dict)
    load: MachineLoad | None = None  # what the rest of the machine did meanwhile

    @property
    def flagged(self) -> bool:
        return any(m.flagged for m in (self.prefill_ms, self.decode_ms, self.throughput_tok_s))

    @staticmethod
    def combine(visits: list["SubnetMeasurement"]) -> "SubnetMeasurement":
        """Visits of one sub-network as one measurement: figures by `Measurement.combine`, the highest peak."""
        return SubnetMeasurement(
            Measurement.combine([v.prefill_ms for v in visits]),
            Measurement.combine([v.decode_ms for v in visits]),
            Measurement.combine([v.throughput_tok_s for v in visits], higher_is_better=True),
            peak_mem_mib=max(v.peak_mem_mib for v in visits),
            model_bytes=visits[0].model_bytes,
            weights=visits[0].weights,
            extra=visits[0].extra,
            load=MachineLoad.worst([v.load for v in visits if v.load is not None]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "prefill_ms": self.prefill_ms.to_dict(),
            "decode_ms": self.decode_ms.to_dict(),
            "throughput_tok_s": self.throughput_tok_s.to_dict(),
            "peak_mem_mib": self.peak_mem_mib,
            "model_bytes": self.model_bytes,
            "weights": self.weights,
            "flagged": self.flagged,
            **self.extra,
            **self._bandwidth(),
            **({"load": self.load.to_dict()} if self.load is not None else {}),
        }

    def _bandwidth(self) -> dict[str, float]:
        if "decode_bytes_per_step" not in self.extra or "peak_bandwidth_gb_s" not in self.extra:
            return {}
        fraction = bandwidth_fraction(
            self.extra["decode_bytes_per_step"], self.decode_ms.spread.median, self.extra["peak_bandwidth_gb_s"]
        )
        return {"decode_bandwidth_fraction": fraction}


class Backend:
    """Base of all backends; see the module docstring for what a subclass writes."""

    name: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    # samples per set, relative to the protocol's `repeats`: a decode step is short and noisy,
    # a whole generation is long and averages itself
    decode_repeat_factor: ClassVar[float] = 2.0
    generate_repeat_factor: ClassVar[float] = 0.5

    def __init__(
        self,
        model: str | Path,
        precision: str,
        device: str,
        threads: int,
        weights: str = "auto",
        seed: int = 0,
        clock: str = "wall",
    ):
        check_clock(clock, device, threads)
        self.model = model
        self.precision = precision
        self.device = device
        self.threads = threads
        self.weights = weights
        self.seed = seed
        self.clock = clock

    # ---- what a backend implements ---------------------------------------------------------
    @classmethod
    def check_available(cls, device: str, precision: str) -> None:
        """Raise `BackendUnavailable` (one line) when this backend cannot run here."""

    @classmethod
    def check_shapes(cls, shapes: Shapes) -> None:
        """Raise `BadInputError` (one line) for shapes this backend cannot run on any machine (none by default)."""

    def load(self, subnet: SubnetConfig) -> int:
        raise NotImplementedError

    def prefill(self, shapes: Shapes) -> Workload:
        raise NotImplementedError

    def decode(self, shapes: Shapes) -> Workload:
        raise NotImplementedError

    def generate(self, shapes: Shapes) -> Workload:
        raise NotImplementedError

    def unload(self) -> None:
        raise NotImplementedError

    @property
    def weights_source(self) -> str:
        """Where the loaded weights came from ("checkpoint" or "random"); recorded with the figures."""
        return "random"

    def record_extra(self, subnet: SubnetConfig, shapes: Shapes) -> dict[str, Any]:
        """Fields this backend adds to each record of the loaded sub-network (none by default)."""
        return {}

    # ---- device hooks ------------------------------------------------------------------------
    def synchronize(self) -> None:
        """Wait until queued device work is done (a no-op on the CPU)."""

    def time_ms(self, workload: Workload) -> float:
        """Wall time of one `run`, synchronized on both ends; `reset` is not timed."""
        if workload.reset is not None:
            workload.reset()
        read_clock = CLOCK_READERS[self.clock]
        self.synchronize()
        start = read_clock()
        workload.run()
        self.synchronize()
        return (read_clock() - start) * 1e3

    def memory_probe(self) -> "MemoryProbe":
        return CpuRssProbe()

    # ---- what the base owns -----------------------------------------------------------------
    @classmethod
    def check_supported(cls, device: str, precision: str) -> None:
        """Refuse a device or precision this backend does not have (on any machine)."""
        if device not in cls.devices:
            raise BackendUnavailable(f"{device!r}: backend {cls.name} runs on {list(cls.devices)}", param="device")
        if precision not in cls.precisions:
            raise BadInputError(f"{precision!r}: backend {cls.name} supports {list(cls.precisions)}", param="precision")

    @classmethod
    def validate(cls, device: str, precision: str) -> None:
        """Refuse a device or precision this backend does not have, then check it runs on this machine."""
        cls.check_supported(device, precision)
        cls.check_available(device, precision)

    def measure(self, subnet: SubnetConfig, shapes: Shapes, protocol: Protocol) -> SubnetMeasurement:
        """Load one sub-network, measure prefill, decode and throughput, unload it."""
        meter = LoadMeter().start()
        probe = self.memory_probe()
        probe.start()
        model_bytes = self.load(subnet)
        try:
            prefill = measure(self._sampler(self.prefill(shapes)), protocol)
            decode = measure(self._sampler(self.decode(shapes)), protocol.scaled_by(self.decode_repeat_factor))
            generate = self._sampler(self.generate(shapes))
            tokens = shapes.batch_size * shapes.gen_len
            throughput = measure(
                lambda: tokens * 1e3 / generate(), protocol.scaled_by(self.generate_repeat_factor), higher_is_better=True
            )
            peak = probe.peak_mib()
            source = self.weights_source
            extra = self.record_extra(subnet, shapes)
        finally:
            self.unload()
            probe.stop()
        return SubnetMeasurement(prefill, decode, throughput, peak, model_bytes, source, extra, meter.stop())

    def measure_visits(
        self, subnets: list[SubnetConfig], shapes: Shapes, protocol: Protocol
    ) -> list[SubnetMeasurement]:
        """Each sub-network measured `protocol.visits` times, taking turns; its visits combined."""
        visits: list[list[SubnetMeasurement]] = [[] for _ in subnets]
        for _ in range(protocol.visits):
            for measured, subnet in zip(visits, subnets):
                measured.append(self.measure(subnet, shapes, protocol))
        return [SubnetMeasurement.combine(measured) for measured in visits]

    def warm_up(self, subnet: SubnetConfig, shapes: Shapes) -> None:
        """Run every workload once, unrecorded, so one-time start-up costs land in no record."""
        self.load(subnet)
        try:
            for workload in (self.prefill(shapes), self.decode(shapes), self.generate(shapes)):
                self.time_ms(workload)
        finally:
            self.unload()

    def _sampler(self, workload: Workload) -> Callable[[], float]:
        return lambda: self.time_ms(workload)


# ---- peak memory ------------------------------------------------------------------------------
class MemoryProbe:
    """Peak memory growth between `start` and `peak_mib`."""

    def start(self) -> None:
        raise NotImplementedError

    def peak_mib(self) -> float:
        raise NotImplementedError

    def stop(self) -> None:
        """Return freed memory to the system so the next sub-network starts from a low baseline."""
        release_freed_memory()


class CpuRssProbe(MemoryProbe):
    """Growth of the process's peak resident set (Linux: VmHWM, reset through /proc/self/clear_refs).

    Freed memory is handed back to the system first (`malloc_trim`), so the baseline is not
    inflated by what the previous sub-network left behind. Without /proc the process-wide
    `ru_maxrss` is used, which only grows: figures are then upper bounds.
    """

    def start(self) -> None:
        release_freed_memory()
        self._baseline = _rss_kib("VmRSS")
        _reset_peak_rss()

    def peak_mib(self) -> float:
        return max(0.0, (_rss_kib("VmHWM") - self._baseline) / 1024)


def release_freed_memory() -> None:
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)


def _rss_kib(field: str) -> int:
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB elsewhere


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux, or not allowed: VmHWM / ru_maxrss stays process-wide (an upper bound)


class ArtifactTiming:
    """Mixed into a backend (before it) that times an exported artifact, a `runtime.Artifact`: its own
    file, precision and device, instead of building the sub-network; `load` first calls `check_holds`."""

    def __init__(self, artifact: Any, threads: int, **kwargs: Any):
        manifest = artifact.manifest
        super().__init__(artifact.directory, manifest["precision"], manifest["device"], threads, **kwargs)
        self.artifact = artifact

    @property
    def weights_source(self) -> str:
        return "checkpoint"

    def check_holds(self, subnet: SubnetConfig) -> None:
        """`BadInputError` unless the artifact holds `subnet`."""
        held = self.artifact.manifest["subnet_id"]
        if subnet.id != held:
            raise BadInputError(f"{self.artifact.directory}: holds sub-network {held}, not {subnet.id}")
