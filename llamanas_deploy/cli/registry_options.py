"""The shared options whose choices are the names in a registry (see `options.Shared`).

Apart from `options.py` because reading a registry imports its package (the profiler's or the
search's: 130-180 ms), which only the commands that take these options should pay in `--help`.
"""

from __future__ import annotations

import click

from ..profiler.backends import BACKENDS
from ..search.algorithms import ALGORITHMS
from .options import Shared

BACKEND = Shared("--backend", "Profiler backend.", type=click.Choice(sorted(BACKENDS)))
ALGORITHM = Shared("--algorithm", "Search algorithm.", type=click.Choice(sorted(ALGORITHMS)))
