"""What the machine was doing while a figure was measured: other processes' CPU, steal, load, clock.

`LoadMeter.start()` before a measurement and `.stop()` after give a `MachineLoad` of that
interval, read from Linux's `/proc/stat` (all CPUs' busy and steal time), this process's own CPU
time (so the measuring threads do not count as load), `/proc/loadavg` and the CPUs' current
frequency where cpufreq shows it. A measurement is `loaded` when other processes kept at least
`LOADED_OTHERS_CORES` cores busy, or the hypervisor took at least `LOADED_STEAL_PCT` % of the CPU
time: its figure is then likely slower than this machine when quiet. Elsewhere (no /proc) every
field is None and nothing is flagged.

`pin_cpus(cpus)` fixes the measuring process to the given CPUs where the OS allows it.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import BadInputError

LOADED_OTHERS_CORES = 0.5
LOADED_STEAL_PCT = 5.0
PROC_STAT = Path("/proc/stat")
PROC_LOADAVG = Path("/proc/loadavg")
CPUFREQ_GLOB = "cpu[0-9]*/cpufreq/scaling_cur_freq"
CPU_DIR = Path("/sys/devices/system/cpu")


@dataclass(frozen=True)
class MachineLoad:
    """The load of one measured interval (None where the OS does not say)."""

    others_cores: float | None  # cores kept busy by other processes, on average
    steal_pct: float | None  # % of all CPU time the hypervisor gave to other guests
    loadavg_1m: float | None
    cpu_mhz: float | None  # mean current frequency of the CPUs

    @property
    def loaded(self) -> bool:
        return (self.others_cores or 0.0) >= LOADED_OTHERS_CORES or (self.steal_pct or 0.0) >= LOADED_STEAL_PCT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"loaded": self.loaded}

    @staticmethod
    def worst(loads: list["MachineLoad"]) -> "MachineLoad":
        """Several intervals (the visits of one sub-network) as one: the most load, the lowest clock."""
        def known(name: str) -> list[float]:
            return [getattr(load, name) for load in loads if getattr(load, name) is not None]

        worst = {name: max(known(name), default=None) for name in ("others_cores", "steal_pct", "loadavg_1m")}
        return MachineLoad(**worst, cpu_mhz=min(known("cpu_mhz"), default=None))


@dataclass(frozen=True)
class _Counters:
    wall_s: float
    own_cpu_s: float
    busy_s: float | None
    steal_s: float | None
    total_s: float | None


class LoadMeter:
    """Measures the machine's load between `start()` and `stop()`."""

    def start(self) -> "LoadMeter":
        self._start = _read_counters()
        return self

    def stop(self) -> MachineLoad:
        end = _read_counters()
        start = self._start
        elapsed = end.wall_s - start.wall_s
        others = steal = None
        if end.busy_s is not None and start.busy_s is not None and elapsed > 0:
            own = end.own_cpu_s - start.own_cpu_s
            others = round(max(0.0, (end.busy_s - start.busy_s - own) / elapsed), 3)
            total = end.total_s - start.total_s
            steal = round(100.0 * (end.steal_s - start.steal_s) / total, 2) if total > 0 else 0.0
        return MachineLoad(others, steal, _loadavg(), _cpu_mhz())


def _read_counters() -> _Counters:
    wall, own = time.monotonic(), time.process_time()
    try:
        fields = PROC_STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return _Counters(wall, own, None, None, None)
    if not fields or fields[0] != "cpu":
        return _Counters(wall, own, None, None, None)
    ticks = [int(v) for v in fields[1:]] + [0] * 8
    user, nice, system, idle, iowait, irq, softirq, steal = ticks[:8]
    hz = os.sysconf("SC_CLK_TCK")
    busy = user + nice + system + irq + softirq  # guest time is counted inside user already
    total = busy + idle + iowait + steal
    return _Counters(wall, own, busy / hz, steal / hz, total / hz)


def _loadavg() -> float | None:
    try:
        return float(PROC_LOADAVG.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _cpu_mhz() -> float | None:
    readings = []
    for path in CPU_DIR.glob(CPUFREQ_GLOB):
        try:
            readings.append(int(path.read_text()) / 1000.0)
        except (OSError, ValueError):
            continue
    return round(sum(readings) / len(readings), 1) if readings else None


def was_loaded(figures: dict[str, Any]) -> bool:
    """Whether a record (or a measurement's figures) was measured under load; older records say nothing: no."""
    return bool((figures.get("load") or {}).get("loaded"))


def pin_cpus(cpus: tuple[int, ...]) -> tuple[int, ...]:
    """Fix this process (all its threads) to `cpus`; `BadInputError` where the OS cannot."""
    if not hasattr(os, "sched_setaffinity"):
        raise BadInputError("this OS cannot pin a process to CPUs", param="pin_cpus")
    try:
        for thread in _threads():  # on Linux an affinity is per thread; threads started later inherit it
            _pin_thread(thread, cpus)
    except OSError as err:  # a CPU the machine lacks, or one its cgroup keeps from this process
        raise BadInputError(f"cannot pin to CPU(s) {list(cpus)} ({err.strerror or err}); this process may use "
                            f"{sorted(os.sched_getaffinity(0))}", param="pin_cpus") from None  # fmt: skip
    return tuple(sorted(os.sched_getaffinity(0)))


def _pin_thread(thread: int, cpus: tuple[int, ...]) -> None:
    try:
        os.sched_setaffinity(thread, cpus)
    except ProcessLookupError:
        pass  # the thread ended since the listing


def _threads() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc/self/task")]
    except OSError:
        return [0]
