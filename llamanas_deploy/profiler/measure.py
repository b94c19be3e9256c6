"""Measuring a few given sub-networks the way a profile measures, without writing a profile.

`measure_subnets(source, subnets, settings)` builds the settings' backend, warms it up once and
measures the sub-networks in turns (`Backend.measure_visits`): what `llamanas run` does to compare
its winner with the full network, and with the drift anchor, as its predictor's profile was measured.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..subnet_config import SubnetConfig
from .backends import get_backend
from .base import SubnetMeasurement
from .runner import ProfileSettings


def measure_subnets(
    source: str | Path, subnets: Sequence[SubnetConfig], settings: ProfileSettings
) -> list[SubnetMeasurement]:
    """Each of `subnets` of the super-network at `source` (checkpoint directory, `config.json` or built-in
    name) measured `settings.protocol.visits` times, taking turns, with the settings' backend, precision,
    device, threads, weights, seed, clock and shapes; one combined measurement per sub-network, in order.
    The settings' plan (`samples`, `anchor_every`) and `pin_cpus` do not apply."""
    if not subnets:
        return []
    backend = get_backend(settings.backend)(
        source, settings.precision, settings.device, settings.threads, settings.weights, settings.seed, settings.clock
    )
    backend.warm_up(subnets[0], settings.shapes)
    return backend.measure_visits(list(subnets), settings.shapes, settings.protocol)
