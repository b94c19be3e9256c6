"""The shipped predictors (`predictors/*.json`), by name, as nn-Meter lists and loads its own.

A predictor's name is its file's stem, `<target>-<backend>-<precision>-<metric>`. The folder is
`predictors/` in the working directory if it exists, else the one shipped inside the package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BadInputError
from ..shipped import shipped_predictors_dir
from .estimator import LatencyPredictor
from .predictor_file import read_metadata

PREDICTOR_DIRS = (Path("predictors"), shipped_predictors_dir())
LISTED = ("target", "fingerprint_id", "backend", "precision", "device", "threads", "clock", "metric", "unit",
          "space_id", "shapes")  # fmt: skip


def predictors_dir(directory: str | Path | None = None) -> Path:
    """`directory`, or the first of `PREDICTOR_DIRS` that exists."""
    if directory is not None:
        directory = Path(directory)
        if not directory.is_dir():
            raise BadInputError(f"{directory}: no such directory", param="directory")
        return directory
    return next((d for d in PREDICTOR_DIRS if d.is_dir()), PREDICTOR_DIRS[-1])


def list_latency_predictors(directory: str | Path | None = None) -> list[dict[str, Any]]:
    """One entry per predictor file in `directory` (default: the shipped ones): name, path, what it predicts where."""
    rows = []
    for path in sorted(predictors_dir(directory).glob("*.json")):
        meta = read_metadata(path)
        test_mape = meta.get("test_metrics", {}).get("mape_pct")
        rows.append({"name": path.stem, "path": str(path), **{k: meta.get(k) for k in LISTED}, "test_mape_pct": test_mape})
    return rows


def load_latency_predictor(name_or_path: str | Path) -> LatencyPredictor:
    """A shipped predictor by name (see `list_latency_predictors`), or any predictor file by its path."""
    path = Path(name_or_path)
    if path.is_file() or path.suffix == ".json" or len(path.parts) > 1:
        return LatencyPredictor.load(path)
    directory = predictors_dir()
    candidate = directory / f"{name_or_path}.json"
    if not candidate.is_file():
        known = sorted(p.stem for p in directory.glob("*.json"))
        raise BadInputError(f"{name_or_path!r}: no such predictor file or shipped predictor (known: {known})",
                            param="predictor")  # fmt: skip
    return LatencyPredictor.load(candidate)
