"""The measuring protocol (median, IQR, robust CV, fast end, re-measure / flag, visits) and the device fingerprint."""

from __future__ import annotations

import itertools
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llamanas_deploy.profiler.fingerprint import IDENTITY_KEYS, current_fingerprint, fingerprint_id
from llamanas_deploy.profiler.stats import Measurement, Protocol, measure, summarize

positive = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False)


def test_summarize_known_values():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (s.median, s.iqr, s.n) == (3.0, 2.0, 5)
    assert s.cv == pytest.approx(2.0 / 1.349 / 3.0)
    # the fast end: 10th percentile of a time, 90th of a rate (linear between ranks)
    assert s.best == pytest.approx(1.4)
    assert summarize([1.0, 2.0, 3.0, 4.0, 5.0], higher_is_better=True).best == pytest.approx(4.6)


def test_slow_phase_moves_the_median_more_than_the_fast_end():
    quiet = [10.0, 10.2, 10.1, 10.3, 10.0, 10.1, 10.2, 10.4, 10.1, 10.0]
    half_slow = quiet[:4] + [x * 1.5 for x in quiet[4:]]  # the host slowed down mid-set
    assert summarize(half_slow).median > 1.2 * summarize(quiet).median
    assert summarize(half_slow).best == pytest.approx(summarize(quiet).best, rel=0.02)


@given(st.lists(positive, min_size=2, max_size=40), positive)
def test_summarize_is_scale_free_and_bounded(samples, scale):
    s = summarize(samples)
    scaled = summarize([x * scale for x in samples])
    assert min(samples) <= s.median <= max(samples)
    assert s.best <= s.median * (1 + 1e-12) and s.best >= min(samples) * (1 - 1e-12)
    assert s.iqr >= 0 and s.cv >= 0
    assert scaled.cv == pytest.approx(s.cv, rel=1e-6, abs=1e-9)


def test_one_stray_sample_does_not_make_a_set_noisy():
    quiet = [10.0, 10.1, 9.9, 10.0, 10.2, 9.8, 10.0, 10.1, 9.9, 50.0]
    assert summarize(quiet).cv < 0.05
    assert statistics.stdev(quiet) / statistics.mean(quiet) > 0.5  # what a plain CV would say


def _sampler(values):
    stream = iter(values)
    calls = []

    def sample():
        calls.append(1)
        return next(stream)

    return sample, calls


def test_quiet_figure_is_measured_once_after_warm_up():
    sample, calls = _sampler(itertools.repeat(5.0))
    result = measure(sample, Protocol(warmup=2, repeats=5, max_cv=0.1, max_attempts=3))
    assert (result.attempts, result.flagged, result.spread.median) == (1, False, 5.0)
    assert len(calls) == 2 + 5


def test_noisy_set_is_re_measured_and_the_quiet_one_kept():
    noisy = [1.0, 9.0, 1.0, 9.0, 5.0]
    sample, calls = _sampler([0.0] + noisy + [4.0, 4.1, 3.9, 4.0, 4.0])
    result = measure(sample, Protocol(warmup=1, repeats=5, max_cv=0.1, max_attempts=3))
    assert (result.attempts, result.flagged) == (2, False)
    assert result.spread.median == 4.0
    assert len(calls) == 11


def test_figure_noisy_in_every_set_is_flagged_not_dropped():
    sample, calls = _sampler(itertools.cycle([1.0, 3.0, 9.0]))
    result = measure(sample, Protocol(warmup=0, repeats=6, max_cv=0.1, max_attempts=3))
    assert result.flagged and result.attempts == 3 and result.spread.cv > 0.1
    assert result.to_dict()["flagged"] is True
    assert len(calls) == 18


def test_visits_combine_to_the_best_over_the_unflagged():
    def visit(fastest, flagged=False):  # fast end fastest * 1.02 (a time), median fastest * 1.1
        return Measurement(summarize([fastest, fastest * 1.1, fastest * 1.2]), attempts=1, flagged=flagged)

    combined = Measurement.combine([visit(1.0), visit(2.0), visit(1.2), visit(0.1, flagged=True)])
    assert combined.spread.best == pytest.approx(1.0 * 1.02)  # a slow visit never decides
    assert combined.spread.median == pytest.approx(1.2 * 1.1)  # descriptive figures: the median visit
    assert (combined.visits, combined.attempts, combined.flagged, combined.spread.n) == (4, 4, False, 9)
    both_flagged = Measurement.combine([visit(1.0, True), visit(3.0, True)])
    assert both_flagged.flagged and both_flagged.spread.best == pytest.approx(1.02)
    rates = [Measurement(summarize([r, r * 1.1, r * 1.2], higher_is_better=True), 1, False) for r in (100.0, 50.0)]
    assert Measurement.combine(rates, higher_is_better=True).spread.best == pytest.approx(100 * 1.18)


@pytest.mark.parametrize("kwargs", [{"repeats": 2}, {"max_cv": 0}, {"max_attempts": 0}, {"warmup": -1}, {"visits": 0}])
def test_protocol_rejects_nonsense(kwargs):
    with pytest.raises(ValueError):
        Protocol(**kwargs)


def test_fingerprint_describes_this_machine_and_is_stable():
    first, second = current_fingerprint(), current_fingerprint()
    device = first["device"]
    assert first["fingerprint_id"] == second["fingerprint_id"]
    assert len(first["fingerprint_id"]) == 16
    assert device["cpu_logical_cores"] >= device["cpu_physical_cores"] >= 1
    assert device["torch"] and device["python"] and isinstance(device["isa_flags"], list)
    assert set(IDENTITY_KEYS) <= set(device)


def test_fingerprint_id_ignores_thread_settings_but_not_the_cpu():
    device = current_fingerprint()["device"]
    assert fingerprint_id(device | {"threads": {"torch_num_threads": 99}}) == fingerprint_id(device)
    assert fingerprint_id(device | {"cpu_model": "another CPU"}) != fingerprint_id(device)
    assert fingerprint_id(device | {"isa_flags": ["avx2"]}) != fingerprint_id(device)
