"""What the search measures: pluggable objectives, each a name, a direction and a batch evaluation.

The search core only sees the `Objective` protocol. Three kinds ship:

- `AccuracyObjective` — perplexity or multiple-choice accuracy measured on the super-network
  (`expensive`: every call costs real compute, so the search budgets and caches it);
- `LatencyObjective` — a device latency predictor fitted on the same space (cheap);
- `SizeObjective` — fp16 GiB from the analytic parameter count (cheap).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from ..analytics import subnet_stats
from ..errors import BadInputError
from ..model.families import ModelShape
from ..space import SearchSpace
from ..subnet_config import SubnetConfig

DIRECTIONS = ("min", "max")


class Objective(Protocol):
    """One measured quantity of a sub-network."""

    name: str  # key in every record, with its unit: "perplexity", "decode_ms", "fp16_gib"
    direction: str  # "min" or "max"
    expensive: bool  # measured for real: counted against the budget, evaluated one sub-network at a time

    def evaluate(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        """One float per config."""

    def describe(self) -> dict[str, Any]:
        """What this objective is computed from; a resumed search must describe it identically."""


def sign(objective: Objective) -> float:
    """Multiplier that turns the objective into one to minimize."""
    return -1.0 if objective.direction == "max" else 1.0


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class SizeObjective:
    """Model size as the paper reports it: bytes in fp16, in GiB (analytic, from `config.json`)."""

    shape: ModelShape
    name: str = "fp16_gib"
    direction: str = "min"
    expensive: bool = False

    def evaluate(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        return np.array([subnet_stats(self.shape, c).fp16_gib for c in configs], dtype=float)

    def describe(self) -> dict[str, Any]:
        return {"kind": "analytic", "shape": self.shape.__dict__}


# the predictor's metric -> (record name, direction)
LATENCY_METRICS = {
    "decode_ms": ("decode_ms", "min"),
    "prefill_ms": ("prefill_ms", "min"),
    "throughput": ("throughput_tok_s", "max"),
    "throughput_tok_s": ("throughput_tok_s", "max"),
    "peak_mem": ("peak_mem_mib", "min"),
    "peak_mem_mib": ("peak_mem_mib", "min"),
}


class LatencyObjective:
    """A device metric predicted by a `LatencyPredictor` file that was fitted on this space."""

    expensive = False

    def __init__(self, predictor_path: str | Path, space: SearchSpace):
        from ..predict import LatencyPredictor

        self.path = Path(predictor_path)
        self.predictor = LatencyPredictor.load(self.path)
        self.predictor.check_space(space)
        meta = self.predictor.metadata_
        metric = meta.get("metric")
        if metric not in LATENCY_METRICS:
            raise BadInputError(f"{self.path}: predictor metric {metric!r} is not one of {sorted(LATENCY_METRICS)}")
        self.name, self.direction = LATENCY_METRICS[metric]
        self.metadata = meta

    def evaluate(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        return np.asarray(self.predictor.predict(list(configs)), dtype=float)

    def describe(self) -> dict[str, Any]:
        keys = ("space_id", "target", "fingerprint_id", "backend", "precision", "metric", "shapes")
        return {
            "kind": "predictor",
            "file": str(self.path),
            "sha256": file_sha256(self.path),
            **{k: self.metadata.get(k) for k in keys},
        }


class AccuracyObjective:
    """Perplexity (held-out text) or multiple-choice accuracy, measured on the super-network."""

    expensive = True

    def __init__(self, supernet, data, kind: str, source: str, limit: int):
        self.supernet, self.data, self.kind, self.source, self.limit = supernet, data, kind, source, limit
        self.name, self.direction = ("perplexity", "min") if kind == "perplexity" else ("acc_norm", "max")
        self._model_sha256 = supernet.weights_sha256()

    def evaluate(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        from ..evaluate import multiple_choice, perplexity

        if self.kind == "perplexity":
            return np.array([perplexity(self.supernet, c, self.data, max_tokens=self.limit).value for c in configs])
        return np.array([multiple_choice(self.supernet, c, self.data, max_examples=self.limit).value for c in configs])

    def describe(self) -> dict[str, Any]:
        limit = "max_tokens" if self.kind == "perplexity" else "max_examples"
        return {"kind": self.kind, "data": self.source, "model_sha256": self._model_sha256, limit: self.limit}


def accuracy_objective(supernet, model: str, spec: str, max_tokens: int, max_examples: int) -> AccuracyObjective:
    """What `--objective accuracy[:SPEC]` names.

    SPEC: empty or `perplexity` (the model's shipped held-out text), `task` (its shipped
    multiple-choice task), a task JSONL file (`context`/`choices`/`answer` records), or any
    other data file or built-in corpus (perplexity on its text).
    """
    from ..data import load_tokenizer, read_texts, tokenize
    from ..evaluate import load_heldout, load_task

    if spec in ("", "perplexity", "heldout"):
        return AccuracyObjective(supernet, load_heldout(model), "perplexity", f"{model}:heldout", max_tokens)
    if spec == "task":
        return AccuracyObjective(supernet, load_task(model), "multiple_choice", f"{model}:task", max_examples)
    if spec.endswith(".jsonl") and _looks_like_task(spec):
        return AccuracyObjective(supernet, load_task(model, spec), "multiple_choice", spec, max_examples)
    ids = tokenize(read_texts(spec), load_tokenizer(model), eos_id=None)
    return AccuracyObjective(supernet, ids, "perplexity", spec, max_tokens)


def _looks_like_task(path: str) -> bool:
    import json

    try:
        first = next((line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()), "")
        return isinstance(json.loads(first), dict) and "choices" in json.loads(first)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


@dataclass
class ObjectiveSet:
    """What is optimized (in order), plus the measures constraints and the summary need."""

    objectives: list[Objective]
    size: Objective  # always recorded: the summary's "x smaller", and `--max-size`
    latency: Objective | None = None  # `--max-latency` applies to it

    @property
    def accuracy(self) -> Objective | None:
        return next((o for o in self.objectives if o.expensive), None)

    def measures(self) -> list[Objective]:
        extra = [m for m in (self.latency, self.size) if m is not None]
        return list({m.name: m for m in [*self.objectives, *extra]}.values())


def build_objective_set(
    model: str, space: SearchSpace, specs: Sequence[str], eval_tokens: int = 2048, eval_examples: int = 100
) -> ObjectiveSet:
    """Objectives from `--objective` values: `accuracy[:SPEC]`, `latency:PREDICTOR_FILE`, `size`.

    With no accuracy objective named, the model's held-out perplexity is the first objective.
    """
    from ..model.families import read_shape

    parsed = [_parse_spec(s) for s in specs]
    if not any(kind == "accuracy" for kind, _ in parsed):
        parsed.insert(0, ("accuracy", ""))
    size = SizeObjective(read_shape(model))
    # cheap ones first, so a wrong predictor is refused before the super-network is loaded
    built: dict[int, Objective] = {i: size for i, (kind, _) in enumerate(parsed) if kind == "size"}
    built |= {i: LatencyObjective(arg, space) for i, (kind, arg) in enumerate(parsed) if kind == "latency"}
    latencies = [o for o in built.values() if isinstance(o, LatencyObjective)]
    supernet = _load_supernet(model, space)
    for i, (kind, arg) in enumerate(parsed):
        if kind == "accuracy":
            built[i] = accuracy_objective(supernet, model, arg, eval_tokens, eval_examples)
    objectives = [built[i] for i in range(len(parsed))]
    names = [o.name for o in objectives]
    if len(set(names)) != len(names) or len(objectives) < 2:
        raise BadInputError(f"--objective: need at least two distinct objectives, got {names}")
    return ObjectiveSet(objectives, size, latencies[0] if latencies else None)


def _parse_spec(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    if kind not in ("accuracy", "latency", "size") or (kind == "latency") != bool(arg) or (kind == "size" and arg):
        raise BadInputError(
            f"--objective '{spec}': expected accuracy[:TASK_OR_DATA], latency:PREDICTOR_FILE or size"
        )
    return kind, arg


def _load_supernet(model: str, space: SearchSpace):
    from ..model.supernet import SuperNetwork

    supernet = SuperNetwork.load(model)
    supernet.check_space(space)
    return supernet
