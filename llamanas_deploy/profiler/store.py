"""The files of a hardware profile: `fingerprint.json` and the append-only `measurements.jsonl`.

Layout and record fields are in docs/CONTRACTS.md. Reading: `read_profile(dir) -> Profile`.
Writing: `ProfileWriter.open(dir, target, fingerprint)`, then `append(record)` per measured
sub-network. Crash safety:

- each record is one line written with a single `write`, then flushed and fsynced, so a
  record is either complete or missing its final newline;
- on open, a last line without its newline (the process died mid-write) is cut off, so a
  half-written record is never kept or built upon; readers skip it the same way;
- a profile whose `fingerprint.json` names another device is never appended to;
- a lock (flock on the directory) keeps two writers out of one profile at a time;
- a refused directory is left exactly as it was found: every check is made before anything is
  written (fingerprint, torn tail), and a directory created for nothing is removed again;
- the output directory rule of every command (`jsonfiles.check_out_dir`): it must not exist, be
  empty, or be a profile (it holds `fingerprint.json` or `measurements.jsonl`), which is resumed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from ..concepts import TIMED_FIGURES, metric
from ..errors import BadInputError
from ..jsonfiles import check_creatable, dumps, lock_directory, parse_json, read_json, write_json
from ..subnet_config import SubnetConfig
from .fingerprint import IDENTITY_KEYS, current_fingerprint, describe
from .load import was_loaded

__all__ = [
    "Profile", "MeasurementRecord", "ProfileWriter", "read_profile", "current_fingerprint", "record_key", "kept_figure"
]  # fmt: skip

SCHEMA_VERSION = 1
FINGERPRINT_FILE = "fingerprint.json"
MEASUREMENTS_FILE = "measurements.jsonl"
STATISTICS = ("best", "median")  # what a predictor learns of a timing
REQUIRED_FIELDS = (
    "schema_version", "target", "fingerprint_id", "space_id", "subnet", "subnet_id", "backend",
    "precision", "device", "threads", "shapes", *TIMED_FIGURES, "peak_mem_mib", "model_bytes", "flagged", "timestamp",
)  # fmt: skip


@dataclass(frozen=True)
class MeasurementRecord:
    """One measured sub-network; `raw` is the JSON object exactly as stored."""

    subnet: SubnetConfig
    raw: dict[str, Any]
    line: int = 0  # in measurements.jsonl: records are appended in the order they were measured

    @property
    def is_anchor(self) -> bool:
        """A measurement of the profile's drift reference (`SearchSpace.anchor`), not of the plan."""
        return self.raw.get("role") == "anchor"

    @property
    def backend(self) -> str:
        return self.raw["backend"]

    @property
    def precision(self) -> str:
        return self.raw["precision"]

    @property
    def space_id(self) -> str:
        return self.raw["space_id"]

    @property
    def shapes(self) -> dict[str, int]:
        return self.raw["shapes"]

    @property
    def flagged(self) -> bool:
        return bool(self.raw["flagged"])

    @property
    def loaded(self) -> bool:
        return was_loaded(self.raw)

    @property
    def key(self) -> str:
        return record_key(self.raw)

    def value(self, name: str, statistic: str = "best") -> float:
        """The kept figure of metric `name` (its name or its record field); see `kept_figure`."""
        return kept_figure(self.raw[metric(name).field], statistic)

    def has_best(self, name: str) -> bool:
        """Whether the record holds the fast end of metric `name` (records before it hold the median only)."""
        entry = self.raw[metric(name).field]
        return not isinstance(entry, dict) or "best" in entry

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)


@dataclass
class Profile:
    """A profile directory as read: its fingerprint and its complete records."""

    path: Path
    fingerprint: dict[str, Any]
    records: list[MeasurementRecord] = field(default_factory=list)  # the planned sub-networks
    anchors: list[MeasurementRecord] = field(default_factory=list)  # the drift reference, between them

    @property
    def target(self) -> str:
        return self.fingerprint["target"]

    def filter(
        self,
        backend: str | None = None,
        precision: str | None = None,
        space_id: str | None = None,
        device: str | None = None,
        shapes: dict[str, int] | None = None,
    ) -> list[MeasurementRecord]:
        """Records matching every criterion that is given."""
        wanted = {"backend": backend, "precision": precision, "space_id": space_id, "device": device, "shapes": shapes}
        wanted = {k: v for k, v in wanted.items() if v is not None}
        return [r for r in self.records if all(r.raw.get(k) == v for k, v in wanted.items())]


def kept_figure(entry: dict[str, Any] | float, statistic: str = "best") -> float:
    """A timing's `statistic`: "best" (its fast end, see `stats`; the median in records older
    than `best`) or "median"; a plain figure (peak memory) as it is."""
    if not isinstance(entry, dict):
        return float(entry)
    if statistic not in STATISTICS:
        raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")
    return float(entry["best"] if statistic == "best" and "best" in entry else entry["median"])


def record_key(raw: dict[str, Any]) -> str:
    """What makes two records the same measurement (a rerun skips keys already present)."""
    parts = [raw.get(k) for k in ("subnet_id", "model_id", "backend", "precision", "device", "threads", "clock")]
    parts.append(raw.get("visit", 0))
    if raw.get("role") == "anchor":
        parts.append(["anchor", raw.get("anchor_index")])
    return json.dumps(parts + [raw.get("shapes")], sort_keys=True)


# ---- reading ------------------------------------------------------------------------------
def read_profile(path: str | Path) -> Profile:
    """Read a profile directory; `BadInputError` names the file (and line) of anything corrupt."""
    path = Path(path)
    if not path.is_dir():
        raise BadInputError(f"{path}: no such profile directory")
    fingerprint = read_fingerprint(path / FINGERPRINT_FILE)
    records = _read_records(path, fingerprint["fingerprint_id"])
    return Profile(path, fingerprint, [r for r in records if not r.is_anchor], [r for r in records if r.is_anchor])


def _read_records(path: Path, fingerprint_id: str) -> list[MeasurementRecord]:
    """The complete records of the profile at `path`, each checked to be of device `fingerprint_id`."""
    measurements = path / MEASUREMENTS_FILE
    if not measurements.is_file():
        return []
    return [_parse_record(line, n, measurements, fingerprint_id) for n, line in _complete_lines(measurements)]


def is_profile_dir(path: Path) -> bool:
    """Whether `path` holds a profile's files (a rerun resumes it)."""
    return any((path / name).exists() for name in (FINGERPRINT_FILE, MEASUREMENTS_FILE))


def read_fingerprint(path: str | Path) -> dict[str, Any]:
    """A profile's `fingerprint.json` (the file, or the profile directory holding it), checked."""
    path = Path(path)
    path = path / FINGERPRINT_FILE if path.is_dir() else path
    if not path.is_file():
        raise BadInputError(f"{path}: missing; a profile directory needs its {FINGERPRINT_FILE}")
    data = read_json(path, "fingerprint file")
    needed = ("schema_version", "target", "fingerprint_id", "device")
    missing = [k for k in needed if not isinstance(data, dict) or k not in data]
    if missing:
        raise BadInputError(f"{path}: not a fingerprint file (missing {missing})")
    if data["schema_version"] != SCHEMA_VERSION or isinstance(data["schema_version"], bool):
        raise BadInputError(f"{path}: schema_version {data['schema_version']!r} is not supported")
    for key, kind, expected in (("target", str, "a string"), ("fingerprint_id", str, "a string"),
                                ("device", dict, "an object")):  # fmt: skip
        if not isinstance(data[key], kind) or not data[key]:
            raise BadInputError(f"{path}: {key}: expected {expected}, got {data[key]!r}")
    return data


def _complete_lines(path: Path) -> Iterable[tuple[int, str]]:
    """Numbered non-empty lines, without a final line that lacks its newline (a torn write)."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = text.split("\n")[:-1]  # the last piece is "" for a complete file, or a torn record
    return [(i, line) for i, line in enumerate(lines, 1) if line.strip()]


def _parse_record(line: str, number: int, path: Path, fingerprint_id: str) -> MeasurementRecord:
    source = f"{path}:{number}"
    raw = parse_json(line, source)
    if not isinstance(raw, dict):
        raise BadInputError(f"{source}: a record must be a JSON object")
    missing = [k for k in REQUIRED_FIELDS if k not in raw]
    if missing:
        raise BadInputError(f"{source}: record is missing {missing}")
    if raw["schema_version"] != SCHEMA_VERSION:
        raise BadInputError(f"{source}: schema_version {raw['schema_version']} is not supported")
    if raw["fingerprint_id"] != fingerprint_id:
        raise BadInputError(
            f"{source}: record measured on device {raw['fingerprint_id']}, but the profile's device is {fingerprint_id}"
        )
    for name in TIMED_FIGURES:
        if not isinstance(raw[name], dict) or not all(k in raw[name] for k in ("median", "iqr", "cv", "n")):
            raise BadInputError(f"{source}: {name} must be an object with median, iqr, cv, n")
    if not isinstance(raw.get("load", {}), dict) or raw.get("role", "anchor") != "anchor":
        raise BadInputError(f"{source}: load must be an object and role, when given, \"anchor\"")
    subnet = SubnetConfig.from_dict(raw["subnet"], f"{source}: subnet")
    if subnet.id != raw["subnet_id"]:
        raise BadInputError(f"{source}: subnet_id {raw['subnet_id']} does not match its subnet (id {subnet.id})")
    return MeasurementRecord(subnet, raw, number)


# ---- writing ------------------------------------------------------------------------------
class ProfileWriter:
    """Appends records to one profile directory; use as a context manager (holds the lock)."""

    def __init__(self, path: Path, fingerprint: dict[str, Any], keys: set[str], dropped_bytes: int):
        self.path = path
        self.fingerprint = fingerprint
        self.keys = keys
        self.dropped_bytes = dropped_bytes
        self._lock_fd: int | None = None
        self._created: Path | None = None  # what `open` made: undone when the profile fails before its first record
        self._wrote_fingerprint = False

    @classmethod
    def open(cls, path: str | Path, target: str, fingerprint: dict[str, Any]) -> "ProfileWriter":
        """Open (or create) the profile of `target` at `path` for this device; refuse a foreign one,
        and a directory that is neither empty nor a profile, leaving it as it was."""
        path = Path(path)
        check_profile_out(path)
        created = _make_dirs(path)
        writer = cls(path, {}, set(), 0)
        try:
            writer._lock()
            stored = _check_fingerprint(path / FINGERPRINT_FILE, target, fingerprint)
            data = stored or {"schema_version": SCHEMA_VERSION, "target": target, **fingerprint}
            keys = {r.key for r in _read_records(path, data["fingerprint_id"])}
            # every check passed: only now is anything written
            if stored is None:
                write_json(path / FINGERPRINT_FILE, data)
            writer.fingerprint, writer.keys = data, keys
            writer._created, writer._wrote_fingerprint = created, stored is None
            writer.dropped_bytes = _drop_torn_tail(path / MEASUREMENTS_FILE)
        except BaseException:
            writer.close()
            _remove_empty(created, path)
            raise
        return writer

    def __enter__(self) -> "ProfileWriter":
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self.close()
        if exc_type is not None and self._wrote_fingerprint and not (self.path / MEASUREMENTS_FILE).exists():
            # refused before measuring anything (say, a model too large for memory): leave no new profile behind
            (self.path / FINGERPRINT_FILE).unlink(missing_ok=True)
            _remove_empty(self._created, self.path)

    @property
    def target(self) -> str:
        return self.fingerprint["target"]

    @property
    def fingerprint_id(self) -> str:
        return self.fingerprint["fingerprint_id"]

    def has(self, raw: dict[str, Any]) -> bool:
        return record_key(raw) in self.keys

    def append(self, raw: dict[str, Any]) -> None:
        """Write one record as one line, flushed and fsynced before returning."""
        missing = [k for k in REQUIRED_FIELDS if k not in raw]
        if missing:
            raise ValueError(f"record is missing {missing}")
        line = (dumps(raw, indent=None) + "\n").encode()  # strict JSON: a NaN is refused, never written
        fd = os.open(self.path / MEASUREMENTS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.keys.add(record_key(raw))

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    def _lock(self) -> None:
        self._lock_fd = lock_directory(self.path, "profile")  # on the directory: nothing is created before the checks


def check_profile_out(path: Path) -> None:
    """The output-directory rule for a profile: absent, empty, or a profile already (resumed)."""
    if path.exists() and not (path.is_dir() and (is_profile_dir(path) or not any(path.iterdir()))):
        raise BadInputError(f"{path}: exists and is neither empty nor a profile directory (no {FINGERPRINT_FILE} "
                            f"or {MEASUREMENTS_FILE}); refusing to write into it", param="out")  # fmt: skip
    check_creatable(path)


def _make_dirs(path: Path) -> Path | None:
    """Create `path` and missing parents; returns the topmost directory created (None: it existed)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    path.mkdir(parents=True, exist_ok=True)
    return missing[-1] if missing else None


def _remove_empty(created: Path | None, path: Path) -> None:
    """Remove the directories `open` created, from `path` up to `created`, if they are still empty."""
    if created is None:
        return
    for folder in (path, *path.parents):
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == created:
            return


def _check_fingerprint(path: Path, target: str, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The stored fingerprint if it is this device's and target's; None if there is none; else refuse."""
    if not path.exists():
        return None
    stored = read_fingerprint(path)
    if stored["fingerprint_id"] != fingerprint["fingerprint_id"]:
        diff = _identity_diff(stored["device"], fingerprint["device"])
        raise BadInputError(
            f"{path}: profile '{stored['target']}' was measured on another device "
            f"(fingerprint {stored['fingerprint_id']}, this machine {fingerprint['fingerprint_id']}: {diff}); "
            f"refusing to mix measurements, use a new target or output directory"
        )
    if stored["target"] != target:
        raise BadInputError(f"{path}: this directory holds target '{stored['target']}', not '{target}'")
    return stored


def _identity_diff(stored: dict[str, Any], here: dict[str, Any]) -> str:
    diffs = [f"{k} {stored.get(k)!r} vs {here.get(k)!r}" for k in IDENTITY_KEYS if stored.get(k) != here.get(k)]
    return "; ".join(diffs[:2]) or f"stored device {describe(stored)}"


def _drop_torn_tail(path: Path) -> int:
    """Cut a final line that lacks its newline (a write cut short); returns the bytes dropped."""
    if not path.is_file():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return len(data) - keep

