"""constraints-floors.txt pins exactly the floors that setup.cfg declares (CI installs and tests them)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# torch's declared floor (the stock CUDA image's release) has no CPU build on the index CI reaches:
# CI tests the one CPU build it can install, and says so in constraints-floors.txt
TESTED_ABOVE_FLOOR = {"torch": "2.13.0"}


def _declared() -> dict[str, str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    floors = {}
    for line in config["options"]["install_requires"].strip().splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)(;.*)?", line.strip())
        assert match, f"setup.cfg: {line!r} has no '>=' floor"
        if match.group(3) and "!=" in match.group(3):
            continue  # the other platforms' variant of a package (xgboost vs xgboost-cpu)
        floors[match.group(1).lower()] = match.group(2)
    return floors


def _pinned() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints-floors.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower()] = version
    return pins


def _same_release(a: str, b: str) -> bool:
    pad = lambda v: [int(x) for x in v.split(".")] + [0] * (4 - len(v.split(".")))  # noqa: E731
    return pad(a) == pad(b)


def test_every_declared_floor_is_pinned_in_the_floors_file():
    declared, pinned = _declared(), _pinned()
    assert set(declared) == set(pinned)
    for name, floor in declared.items():
        expected = TESTED_ABOVE_FLOOR.get(name, floor)
        assert _same_release(pinned[name], expected), f"{name}: setup.cfg says >={floor}, floors file pins {pinned[name]}"
