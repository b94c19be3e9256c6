"""Reading and writing the project's files: JSON with one error style (the file and the field named),
atomic writes of files and directories.

A write goes to a temporary file in the same directory, is flushed and fsynced, then renamed
over the target, so a crash leaves the old file or the new one, never half of either. JSON is
written strictly (NaN and infinities are refused: they are not JSON).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .errors import BadInputError


def write_text(path: str | Path, text: str, mode: int = 0o644) -> Path:
    """Write `text` to `path` atomically; the file ends readable by all (a temporary file is private)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        try:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            os.unlink(f.name)
            raise
    os.chmod(f.name, mode)
    os.replace(f.name, path)
    return path


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically: a half-drawn plot never replaces the previous one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
    return path


def dumps(data: Any, indent: int | None = 2, sort_keys: bool = False) -> str:
    """Strict JSON text (no NaN / Infinity); compact when `indent` is None."""
    separators = (",", ":") if indent is None else None
    return json.dumps(data, indent=indent, sort_keys=sort_keys, allow_nan=False, separators=separators, default=str)


def write_json(path: str | Path, data: Any, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write `data` as strict JSON, atomically (a trailing newline when indented)."""
    text = dumps(data, indent, sort_keys)
    return write_text(path, text + "\n" if indent is not None else text)


def read_json(path: str | Path, what: str = "JSON file") -> Any:
    """The JSON content of `path`; `BadInputError` naming the file when it is missing, unreadable or not JSON."""
    return parse_json(read_text(path, what), str(path))


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of `path`; `BadInputError` naming the file when it is missing or unreadable."""
    path = Path(path)
    check_regular_file(path, what)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: cannot read {what} (not a UTF-8 text file)") from None
    except OSError as err:
        raise BadInputError(f"{path}: cannot read {what} ({err.strerror or err})") from None


def check_regular_file(path: Path, what: str = "file") -> None:
    """`BadInputError` for a path that exists but is not a regular file (a FIFO or a device would block
    or never end a read); a missing path is left to the reader's own message."""
    import stat

    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise BadInputError(f"{path}: cannot read {what} ({kind})")


def finite(data: Any) -> Any:
    """`data` with every NaN or infinity replaced by None, and `null_because` naming where and why: what
    `--json` prints is strict JSON."""
    found: list[str] = []
    cleaned = _finite(data, "", found)
    if found and isinstance(cleaned, dict):
        cleaned["null_because"] = {where: "not a finite number" for where in found}
    return cleaned


def _finite(value: Any, where: str, found: list[str]) -> Any:
    import math

    if isinstance(value, float) and not math.isfinite(value):
        found.append(where or "value")
        return None
    if isinstance(value, dict):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, f"{where}[{i}]", found) for i, v in enumerate(value)]
    return value


def parse_json(text: str, source: str, unique_keys: bool = False) -> Any:
    """`json.loads` with the project's error: `BadInputError` naming `source` and where the text broke.

    `unique_keys`: an object naming a key twice is refused too (readers that keep the first value and
    readers that keep the last would see different files).
    """
    hook = _unique_object if unique_keys else None
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=hook)
    except RecursionError:
        raise BadInputError(f"{source}: not valid JSON here (nested too deeply)") from None
    except json.JSONDecodeError as err:
        raise BadInputError(f"{source}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except ValueError as err:
        raise BadInputError(f"{source}: not valid JSON ({err})") from None


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"key(s) {repeated} given twice in one object")
    return dict(pairs)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# ---- fields of a file: one error style, naming the file and the field -------------------------------
def field_error(source: str, field: str, expected: str, value: Any) -> BadInputError:
    """`SOURCE: FIELD: expected EXPECTED, got VALUE` (no field: the file's content as a whole)."""
    where = f"{source}: {field}" if field else source
    return BadInputError(f"{where}: expected {expected}, got {value!r}")


def is_integer(value: Any) -> bool:
    """A JSON integer: true and false are not numbers."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value: Any) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def checked_object(value: Any, source: str, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise field_error(source, field, "an object", value)
    return value


def checked_integer(value: Any, source: str, field: str, minimum: int = 1) -> int:
    if not is_integer(value) or value < minimum:
        raise field_error(source, field, "a positive integer" if minimum == 1 else f"an integer >= {minimum}", value)
    return value


def checked_choice(value: Any, choices: Iterable[Any], source: str, field: str) -> Any:
    """`value` if it equals one of `choices` (a list or an object never does, and is never hashed)."""
    choices = list(choices)
    if value not in choices:
        raise field_error(source, field, f"one of {choices}", value)
    return value


def checked_positive_integers(value: Any, names: Sequence[str], source: str, field: str) -> dict[str, int]:
    """An object with exactly the keys `names`, each a positive integer."""
    if not isinstance(value, dict) or sorted(value) != sorted(names):
        raise field_error(source, field, f"an object with {list(names)}", value)
    for name in names:
        checked_integer(value[name], source, f"{field}.{name}")
    return value


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def lock_directory(path: Path, what: str) -> int:
    """An exclusive flock on the directory itself (no lock file); returns the descriptor, whose closing
    releases it. `BadInputError` when another process holds it."""
    import fcntl

    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BadInputError(f"{path}: another process is writing this {what} right now") from None
    return fd


def check_out_dir(out: Path) -> None:
    """A directory to create must not exist, or be empty: nothing already saved is overwritten; and it
    must be creatable (no regular file where one of its parents would be)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out}: exists and is not an empty directory; refusing to overwrite it", param="out")
    check_creatable(out)


def check_creatable(out: Path, param: str = "out") -> None:
    """`BadInputError` when `out` cannot be made because one of its parents is not a directory."""
    blocking = next((parent for parent in Path(out).absolute().parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise BadInputError(f"{out}: cannot be created, {blocking} is a file, not a directory", param=param)


def _scratch_stem(out: Path) -> str:
    """What the scratch directories of builds of `out` on this host start with; the builder's pid follows."""
    return f".{out.name}.building-{socket.gethostname()}-"


def _remove_abandoned_scratch(out: Path) -> None:
    """Remove the scratch directories of builds of `out` whose process died without cleaning up
    (SIGKILL, power loss): those made on this host by a process that no longer exists."""
    stem = _scratch_stem(out)
    for scratch in out.parent.glob(f"{glob.escape(stem)}*"):
        pid = scratch.name[len(stem) :].split("-", 1)[0]
        if scratch.is_dir() and pid.isascii() and pid.isdigit() and not _process_exists(int(pid)):
            shutil.rmtree(scratch, ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


@contextmanager
def new_directory(out: str | Path) -> Iterator[Path]:
    """Build the directory `out` in a temporary directory beside it, renamed to `out` when the block ends well.

    Yields the empty directory to fill, `<scratch>/result`: other names in its parent are scratch
    space, removed with it. `out` must
    not exist or be empty, before and after the block. On an error nothing is left behind.
    """
    out = Path(out)
    check_out_dir(out)
    made = [p for p in out.parents if not p.exists()]  # parents this call creates, innermost first
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_scratch(out)
    try:
        with tempfile.TemporaryDirectory(prefix=f"{_scratch_stem(out)}{os.getpid()}-", dir=out.parent) as tmp:
            built = Path(tmp) / "result"
            built.mkdir()
            yield built
            check_out_dir(out)  # nothing appeared there meanwhile
            if out.is_dir():
                out.rmdir()
            os.replace(built, out)
    except BaseException:
        for parent in made:  # a refused or failed build leaves no empty folders behind either
            try:
                parent.rmdir()
            except OSError:
                break
        raise
