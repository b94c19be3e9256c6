"""Hardware profiler: measure sampled sub-networks on this device and keep the records.

- `runner`: `profile(model, space, ProfileSettings(...), target=...) -> ProfileResult` (the
  sampling plan, resume, progress) and `list_targets(directory)`;
- `stats`: the measuring protocol (warm-up, repeats, median / IQR / CV, re-measure or flag);
- `fingerprint`: what device a profile was taken on;
- `store`: the profile files (`read_profile`, `ProfileWriter`);
- `base`: the `Backend` interface and the workload's `Shapes`; `backends/`: one file per
  backend, registry in `backends/__init__.py`;
- `weights`: one sub-network's weights (from a checkpoint, or random from `config.json`).
"""

from .base import Shapes
from .runner import ProfileResult, ProfileSettings, list_targets, profile, profile_fleet
from .stats import Protocol
from .store import Profile, read_profile

__all__ = [
    "profile", "profile_fleet", "ProfileSettings", "ProfileResult", "list_targets", "Shapes", "Protocol", "Profile", "read_profile",
]
