"""Where the data the toolkit ships lives: its predictors and hardware profiles, inside the package.

In the repository `llamanas_deploy/predictors` and `llamanas_deploy/hardware_profiles` are symlinks to
the top-level `predictors/` and `hardware_profiles/` (the one copy); a wheel or an sdist holds real
folders there, so an installed toolkit finds them as an editable install does.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def shipped_predictors_dir() -> Path:
    """The folder of the shipped latency predictors (`<name>.json`)."""
    return _package_dir("predictors")


def shipped_profiles_dir() -> Path:
    """The folder of the shipped hardware profiles (one directory per target)."""
    return _package_dir("hardware_profiles")


def _package_dir(name: str) -> Path:
    # resolved, so that in the repository paths name the real top-level folder, not the symlink
    return Path(files(__package__), name).resolve()
