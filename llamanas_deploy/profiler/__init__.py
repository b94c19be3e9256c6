"""Hardware profiler: measure sampled sub-networks on this device and keep the records.

- `runner`: `profile(supernet, space, ProfileSettings(...), target=...) -> ProfileResult` (the
  sampling plan, resume, progress) and `list_targets(directory)`;
- `measure`: `measure_subnets(source, subnets, settings)`, given sub-networks measured as a profile
  measures them, nothing written;
- `discovery`: `find_matching_profile`, a profile of this device already measured (`PROFILE_DIRS`);
- `stats`: the measuring protocol (warm-up, repeats, median / IQR / CV, re-measure or flag);
- `fingerprint`: what device a profile was taken on;
- `store`: the profile files (`read_profile`, `ProfileWriter`);
- `base`: the `Backend` interface and the workload's `Shapes`; `backends/`: one file per
  backend, registry in `backends/__init__.py`;
- `weights`: one sub-network's weights (from a checkpoint, or random from `config.json`).
"""

from .base import Shapes
from .discovery import find_matching_profile
from .measure import measure_subnets
from .runner import ProfileResult, ProfileSettings, list_targets, profile, profile_fleet, target_name_from
from .stats import Protocol
from .store import Profile, read_profile

__all__ = [
    "profile", "profile_fleet", "ProfileSettings", "ProfileResult", "list_targets", "target_name_from", "Shapes",
    "Protocol", "Profile", "read_profile", "measure_subnets", "find_matching_profile",
]  # fmt: skip
