"""Finding a profile already measured on this device: a shipped one, or an earlier run's.

`find_matching_profile` looks through `PROFILE_DIRS` (one sub-directory per target) for a profile
whose fingerprint is this machine's and whose records of one measurement setting are enough to
fit a predictor on, so that `llamanas run` measures nothing it already has.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import BadInputError
from ..shipped import shipped_profiles_dir
from ..space import SearchSpace
from . import fingerprint

PROFILE_DIRS = (Path("hardware_profiles"), shipped_profiles_dir())


def find_matching_profile(
    space: SearchSpace,
    metric: str,
    *,
    backend: str,
    precision: str,
    device: str,
    threads: int,
    clock: str,
    min_subnets: int,
) -> Path | None:
    """The first profile directory of `PROFILE_DIRS` measured on this device with `backend`, `precision`,
    `device`, `threads` and `clock` that holds at least `min_subnets` usable sub-networks of `metric`
    in `space` (flagged measurements dropped, as a fit drops them); None when there is none."""
    from ..predict.dataset import load_profile_data  # what a fit can use is the predictor stage's rule

    here = fingerprint.current_fingerprint()["fingerprint_id"]
    wanted = {"device": device, "threads": threads, "clock": clock}
    for root in PROFILE_DIRS:
        for candidate in sorted(root.glob("*/fingerprint.json")) if root.is_dir() else []:
            try:
                data = load_profile_data(candidate.parent, metric, space, backend, precision, min_subnets=1)
            except BadInputError:
                continue
            if (
                data.fingerprint["fingerprint_id"] == here
                and all(data.setting[k] == v for k, v in wanted.items())
                and len(data.y) >= min_subnets
            ):
                return candidate.parent
    return None
