"""The latency predictor file: one JSON object, written and read (and checked) here.

Its keys, in order: `format`, `schema_version`, `metadata` (what was fitted on what, checked when
read), `features` (the feature description), `prior` (basis names and non-negative coefficients),
`xgboost` (XGBoost's own JSON model embedded as an object: no pickle), and `sha256` over all of it
so corruption is caught. A transferred predictor (schema version 2) also holds `transfer`: its
source's reference (name, sha256, where it was measured) and the source's whole file body.
`LatencyPredictor.save` / `.load` go through `write` / `read`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..concepts import CLOCKS, METRICS
from ..errors import BadInputError
from ..jsonfiles import (
    checked_choice, checked_integer, checked_object, checked_positive_integers, dumps, field_error, is_finite_number,
    is_integer, read_json, write_text,
)  # fmt: skip
from ..profiler.base import SHAPE_FIELDS
from ..profiler.store import STATISTICS
from .features import FeatureBuilder

FILE_FORMAT = "llamanas-latency-predictor"
FILE_SCHEMA_VERSION = 1
TRANSFER_SCHEMA_VERSION = 2  # a file that embeds its source predictor
SCHEMA_VERSIONS = (FILE_SCHEMA_VERSION, TRANSFER_SCHEMA_VERSION)
SOURCE_BASIS = "source_prediction"
TUNED_HYPERPARAMETERS = ("max_depth", "num_boost_round")  # chosen by cross-validation, recorded in the metadata
REQUIRED_METADATA = ("space_id", "metric", "shapes", "feature_schema_version", "hyperparameters")


@dataclass(frozen=True, eq=False)
class PredictorFile:
    """What a predictor file holds: metadata, features, the prior's coefficients, the XGBoost booster,
    and for a transferred predictor its source (`transfer`: the reference and the source's content).

    `source`: where it was read from (the path, or an embedded source predictor's name); "" when not read.
    """

    metadata: dict[str, Any]
    features: FeatureBuilder
    prior_coef: np.ndarray
    booster: Any
    transfer: tuple[dict[str, Any], "PredictorFile"] | None = None
    source: str = ""


def prior_basis(features: FeatureBuilder, transferred: bool) -> list[str]:
    """The names of the prior's basis: the intercept, then the source's prediction or the per-width layer counts."""
    if transferred:
        return ["intercept", SOURCE_BASIS]
    return ["intercept", *(features.names[i] for i in features.count_columns)]


def to_body(content: PredictorFile) -> dict[str, Any]:
    """The file's JSON object, its sha256 last."""
    body = {
        "format": FILE_FORMAT,
        "schema_version": FILE_SCHEMA_VERSION if content.transfer is None else TRANSFER_SCHEMA_VERSION,
        "metadata": content.metadata,
        "features": content.features.to_dict(),
        "prior": {"basis": prior_basis(content.features, content.transfer is not None), "coef": content.prior_coef.tolist()},
        "xgboost": json.loads(bytes(content.booster.save_raw("json"))),
    }
    if content.transfer is not None:
        reference, source = content.transfer
        body["transfer"] = {"reference": reference, "predictor": to_body(source)}
    return body | {"sha256": _digest(body)}


def write(path: str | Path, content: PredictorFile) -> Path:
    """Write atomically: a failure leaves any existing file at `path` untouched."""
    return write_text(path, dumps(to_body(content), indent=None))


def read(path: str | Path) -> PredictorFile:
    """A predictor file's content, every part checked; `BadInputError` naming the file otherwise."""
    path = Path(path)
    return _content(_read_body(path), path, str(path))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a predictor file (checked as `read` checks it) without loading its model."""
    return _read_body(Path(path))["metadata"]


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_body(path: Path) -> dict[str, Any]:
    return _check_body(read_json(path, "predictor file"), path)


def _check_body(body: Any, path: Path | str) -> dict[str, Any]:
    if not isinstance(body, dict) or body.get("format") != FILE_FORMAT:
        raise BadInputError(f"{path}: not a {FILE_FORMAT} file")
    if body.get("schema_version") not in SCHEMA_VERSIONS:
        raise BadInputError(f"{path}: schema_version {body.get('schema_version')} is not supported (expected one of {list(SCHEMA_VERSIONS)})")
    if (body["schema_version"] == TRANSFER_SCHEMA_VERSION) != ("transfer" in body):
        raise BadInputError(f"{path}: schema_version {body['schema_version']} and the 'transfer' section disagree")
    missing = [k for k in ("metadata", "features", "prior", "xgboost", "sha256") if k not in body]
    if missing:
        raise BadInputError(f"{path}: predictor file is missing {missing}")
    content = {key: value for key, value in body.items() if key != "sha256"}
    if body["sha256"] != _digest(content):
        raise BadInputError(f"{path}: content does not match its sha256; the file is corrupted")
    _check_metadata(content["metadata"], str(path))
    return content


def _check_metadata(metadata: Any, source: str) -> None:
    """What predicting, searching and exporting read of the metadata, checked when the file is read."""
    checked_object(metadata, source, "metadata")
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise BadInputError(f"{source}: predictor metadata is missing {missing}")
    checked_choice(metadata["metric"], sorted(METRICS), source, "metadata.metric")
    checked_positive_integers(metadata["shapes"], SHAPE_FIELDS, source, "metadata.shapes")
    if metadata.get("threads") is not None:
        checked_integer(metadata["threads"], source, "metadata.threads")
    for field, choices in (("clock", CLOCKS), ("statistic", STATISTICS)):
        if metadata.get(field) is not None:
            checked_choice(metadata[field], choices, source, f"metadata.{field}")
    hyper = metadata["hyperparameters"]
    if not isinstance(hyper, dict) or not all(is_integer(hyper.get(k)) for k in TUNED_HYPERPARAMETERS):
        raise field_error(source, "metadata.hyperparameters", f"an object with integer {list(TUNED_HYPERPARAMETERS)}", hyper)


def _content(body: dict[str, Any], path: Path, source: str) -> PredictorFile:
    """The parts of a checked body (`path` names it in errors)."""
    features = FeatureBuilder.from_dict(body["features"], str(path))
    metadata = body["metadata"]
    if features.space.id != metadata["space_id"]:
        raise BadInputError(f"{path}: metadata.space_id {metadata['space_id']!r} is not the id of the space in "
                            f"features.space ({features.space.id}); the file was edited")  # fmt: skip
    transfer = _read_transfer(body, path)
    coef = _read_prior(body["prior"], prior_basis(features, transfer is not None), path)
    booster = _read_booster(body["xgboost"], len(features.names), path)
    return PredictorFile(metadata, features, coef, booster, transfer, source)


def _read_transfer(body: dict[str, Any], path: Path) -> tuple[dict[str, Any], PredictorFile] | None:
    """The reference and the content of a transferred predictor's embedded source (checked like a file of its own)."""
    if "transfer" not in body:
        return None
    section = body["transfer"]
    if not isinstance(section, dict) or not isinstance(section.get("reference"), dict) or "predictor" not in section:
        raise BadInputError(f"{path}: the 'transfer' section needs 'reference' and 'predictor'")
    where = f"{path} (its source predictor)"
    reference = section["reference"]
    source = _content(_check_body(section["predictor"], where), Path(where), reference.get("name", where))
    return reference, source


def _read_prior(prior: Any, basis: list[str], path: Path) -> np.ndarray:
    if not isinstance(prior, dict) or prior.get("basis") != basis:
        raise BadInputError(f"{path}: prior basis does not match the space's widths (expected {basis})")
    coef = prior.get("coef")
    if not isinstance(coef, list) or len(coef) != len(basis) or not all(is_finite_number(c) and c >= 0 for c in coef):
        raise field_error(str(path), "prior.coef", f"a list of {len(basis)} non-negative numbers", coef)
    return np.asarray(coef, dtype=np.float64)


def _read_booster(model: Any, num_features: int, path: Path):
    import xgboost as xgb

    booster = xgb.Booster()
    try:
        booster.load_model(bytearray(json.dumps(model).encode()))
    except xgb.core.XGBoostError as err:
        raise BadInputError(f"{path}: embedded XGBoost model does not load ({str(err).splitlines()[0]})") from None
    if booster.num_features() != num_features:
        raise BadInputError(f"{path}: XGBoost model takes {booster.num_features()} features, expected {num_features}")
    return booster
