"""The measuring protocol: warm up, repeat, summarize (median, IQR, CV), re-measure or flag.

`measure(sample, protocol)` is all a caller needs: `sample()` runs the workload once and
returns one figure (a time in ms, or a rate). The protocol warms up, takes `repeats`
samples, and when their spread is too wide (CV above `max_cv`) takes a fresh set, up to
`max_attempts` sets in all. The set with the smallest CV is kept; if even that one is too
noisy, the result says `flagged` — a noisy figure is never kept silently.

CV here is the robust coefficient of variation, `IQR / 1.349 / median`: it equals
std/mean for normally distributed samples, but one stray sample (another process taking
the core for a moment) does not dominate it, just as it does not move the median we keep.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

# IQR of a normal distribution, in standard deviations
IQR_PER_SIGMA = 1.349


@dataclass(frozen=True)
class Spread:
    """Summary of one set of samples of a figure."""

    median: float
    iqr: float
    cv: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Protocol:
    """How each figure is measured: warm-up calls, samples per set, noise threshold, sets at most."""

    warmup: int = 2
    repeats: int = 10
    max_cv: float = 0.10
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 3 or self.max_cv <= 0 or self.max_attempts < 1:
            raise ValueError(
                f"protocol needs warmup >= 0, repeats >= 3, max_cv > 0, max_attempts >= 1; got {self}"
            )

    def scaled_by(self, factor: float) -> "Protocol":
        """The same protocol with `factor` times the samples per set (at least 3)."""
        return Protocol(self.warmup, max(3, round(self.repeats * factor)), self.max_cv, self.max_attempts)

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Measurement:
    """The kept set's spread, how many sets were taken, and whether it is still too noisy."""

    spread: Spread
    attempts: int
    flagged: bool

    def to_dict(self) -> dict[str, float | int | bool]:
        return self.spread.to_dict() | {"attempts": self.attempts, "flagged": self.flagged}


def summarize(samples: Sequence[float]) -> Spread:
    """Median, interquartile range and robust CV of at least two samples."""
    if len(samples) < 2:
        raise ValueError(f"need at least 2 samples to summarize, got {len(samples)}")
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    iqr = q3 - q1
    cv = iqr / IQR_PER_SIGMA / median if median > 0 else float("inf")
    return Spread(median=median, iqr=iqr, cv=cv, n=len(samples))


def measure(sample: Callable[[], float], protocol: Protocol) -> Measurement:
    """Warm up, then take sets of samples until one is quiet enough or the attempts run out."""
    for _ in range(protocol.warmup):
        sample()
    best: Spread | None = None
    attempt = 0
    while attempt < protocol.max_attempts:
        attempt += 1
        spread = summarize([sample() for _ in range(protocol.repeats)])
        if best is None or spread.cv < best.cv:
            best = spread
        if best.cv <= protocol.max_cv:
            break
    return Measurement(spread=best, attempts=attempt, flagged=best.cv > protocol.max_cv)
