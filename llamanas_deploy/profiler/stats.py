"""The measuring protocol: warm up, repeat, summarize (median, IQR, CV, best), re-measure or flag.

`measure(sample, protocol)` is all a caller needs: `sample()` runs the workload once and
returns one figure (a time in ms, or a rate). The protocol warms up, takes `repeats`
samples, and when their spread is too wide (CV above `max_cv`) takes a fresh set, up to
`max_attempts` sets in all. The set with the smallest CV is kept; if even that one is too
noisy, the result says `flagged` — a noisy figure is never kept silently.

CV here is the robust coefficient of variation, `IQR / 1.349 / median`: it equals
std/mean for normally distributed samples, but one stray sample (another process taking
the core for a moment) does not dominate it, just as it does not move the median we keep.

`best` is the fast end of the set: its 10th percentile for a time, 90th for a rate. Noise
on a shared machine only ever adds time, so the fast end moves much less from one visit
to the next than the median does (dev VM, decode: 8 % vs 11 % median difference between
two visits). `Protocol.visits` is how many times the profiler comes back to each
sub-network, one pass over the whole plan apart, because the host has slow phases lasting
seconds that a visit cannot tell from the sub-network's own cost. They only ever slow a
visit down (shipped dev-VM profile, decode: visits deviate from their sub-network's median
by -15 % at the 5th percentile but +44 % at the 95th), so visits combine by the best of
their `best`s: the XGBoost predictor gets 62 % of held-out decode predictions within ±10 %
from one visit, 92 % from the best of two, 96 % from the best of three (benchmarks/
predictor_accuracy.py; the median of three gave 90 %).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, replace
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
    best: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Protocol:
    """How each figure is measured: warm-up calls, samples per set, noise threshold, sets at most,
    and visits (passes of the profiler over its plan, each measuring every sub-network once)."""

    warmup: int = 2
    repeats: int = 10
    max_cv: float = 0.10
    max_attempts: int = 3
    visits: int = 1

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.repeats < 3 or not 0 < self.max_cv < float("inf") or self.max_attempts < 1 or self.visits < 1:
            raise ValueError(
                f"protocol needs warmup >= 0, repeats >= 3, max_cv > 0, max_attempts >= 1, visits >= 1; got {self}"
            )

    def scaled_by(self, factor: float) -> "Protocol":
        """The same protocol with `factor` times the samples per set (at least 3)."""
        return replace(self, repeats=max(3, round(self.repeats * factor)))

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Measurement:
    """The kept set's spread, how many sets were taken, whether it is still too noisy, and how
    many visits it combines (`combine`)."""

    spread: Spread
    attempts: int
    flagged: bool
    visits: int = 1

    def to_dict(self) -> dict[str, float | int | bool]:
        return self.spread.to_dict() | {"attempts": self.attempts, "flagged": self.flagged, "visits": self.visits}

    @staticmethod
    def combine(visits: Sequence["Measurement"], higher_is_better: bool = False) -> "Measurement":
        """One figure from visits of the same sub-network, over the visits that are not flagged
        (flagged only when every visit was): the best `best`, the median of the rest."""
        kept = [m for m in visits if not m.flagged] or list(visits)
        spread = Spread(
            **{key: statistics.median(getattr(m.spread, key) for m in kept) for key in ("median", "iqr", "cv")},
            n=sum(m.spread.n for m in kept),
            best=best_of([m.spread.best for m in kept], higher_is_better),
        )
        return Measurement(spread, sum(m.attempts for m in visits), all(m.flagged for m in visits), len(visits))


def best_of(values: Sequence[float], higher_is_better: bool = False) -> float:
    """The fastest of several visits' figures: the lowest time, the highest rate."""
    return max(values) if higher_is_better else min(values)


def summarize(samples: Sequence[float], higher_is_better: bool = False) -> Spread:
    """Median, interquartile range, robust CV and fast end of at least two samples."""
    if len(samples) < 2:
        raise ValueError(f"need at least 2 samples to summarize, got {len(samples)}")
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    iqr = q3 - q1
    cv = iqr / IQR_PER_SIGMA / median if median > 0 else float("inf")
    deciles = statistics.quantiles(samples, n=10, method="inclusive")
    best = deciles[-1] if higher_is_better else deciles[0]
    return Spread(median=median, iqr=iqr, cv=cv, n=len(samples), best=best)


def measure(sample: Callable[[], float], protocol: Protocol, higher_is_better: bool = False) -> Measurement:
    """Warm up, then take sets of samples until one is quiet enough or the attempts run out."""
    for _ in range(protocol.warmup):
        sample()
    kept: Spread | None = None
    attempt = 0
    while attempt < protocol.max_attempts:
        attempt += 1
        spread = summarize([sample() for _ in range(protocol.repeats)], higher_is_better)
        if kept is None or spread.cv < kept.cv:
            kept = spread
        if kept.cv <= protocol.max_cv:
            break
    return Measurement(spread=kept, attempts=attempt, flagged=kept.cv > protocol.max_cv)
