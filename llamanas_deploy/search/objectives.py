"""What the search measures: objectives a user builds, bound to a super-network by `SearchProblem`.

Four ship, each configured in its constructor:

- `Perplexity(data=None, max_tokens=2048)` — held-out perplexity measured on the super-network;
- `TaskAccuracy(task=None, max_examples=100)` — multiple-choice accuracy (`acc_norm`), likewise;
- `PredictedLatency(predictor)` — a device metric from a `LatencyPredictor` fitted on the space;
- `ModelSize()` — fp16 GiB from the analytic parameter count.

`bind(problem)` turns one into a measure: an object with `name` (the record key, unit included),
`direction` ("min"/"max"), `expensive` (measured for real: budgeted, cached, one sub-network at a
time), `evaluate(configs)` and `describe()`. Any object with those five and no `bind` is a custom
objective and is used as it is. `bind` reads only what `ProblemView` names (a `SearchProblem` has
it), so objectives do not import the problem module, which imports them. `objectives_from_specs`
reads the CLI's `--objective` strings.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import numpy as np

from ..analytics import subnet_stats
from ..concepts import metric
from ..data import load_tokenizer, read_texts, tokenize
from ..errors import BadInputError
from ..evaluate import load_heldout, load_task, multiple_choice, perplexity
from ..jsonfiles import dumps
from ..model.families import ModelShape
from ..subnet_config import SubnetConfig

if TYPE_CHECKING:
    from ..model.supernet import SuperNetwork
    from ..predict import LatencyPredictor
    from ..space import SearchSpace


class Objective(Protocol):
    """One measured quantity of a sub-network (a bound objective)."""

    name: str  # key in every record, with its unit: "perplexity", "decode_ms", "fp16_gib"
    direction: str  # "min" or "max"
    expensive: bool  # measured for real: counted against the budget, evaluated one sub-network at a time

    def evaluate(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        """One float per config."""

    def describe(self) -> dict[str, Any]:
        """What this objective is computed from; a resumed search must describe it identically."""


class ProblemView(Protocol):
    """What `bind` reads of the problem an objective is bound to (`SearchProblem`)."""

    space: SearchSpace
    model: str  # how records name the super-network
    shape: ModelShape

    @property
    def supernet(self) -> SuperNetwork:
        """The super-network, loaded on first use."""


def sign(objective: Objective) -> float:
    """Multiplier that turns the objective into one to minimize."""
    return direction_sign(objective.direction)


def direction_sign(direction: str) -> float:
    """Multiplier that turns a figure of `direction` ("min" or "max") into one to minimize."""
    return -1.0 if direction == "max" else 1.0


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _positive(value: Any, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadInputError(f"expected an integer >= 1, got {value!r}", param=param)
    return value


# ---- size -------------------------------------------------------------------------------------


class ModelSize:
    """Model size as the paper reports it: bytes in fp16, in GiB (analytic, from `config.json`)."""

    name, direction, expensive = "fp16_gib", "min", False

    def bind(self, problem: ProblemView) -> SizeMeasure:
        return SizeMeasure(problem.shape)

    def __repr__(self) -> str:
        return "ModelSize()"


class SizeMeasure:
    name, direction, expensive = ModelSize.name, ModelSize.direction, ModelSize.expensive

    def __init__(self, shape: ModelShape):
        self.shape = shape

    def evaluate(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        return np.array([subnet_stats(self.shape, c).fp16_gib for c in configs], dtype=float)

    def describe(self) -> dict[str, Any]:
        return {"kind": "analytic", "shape": self.shape.__dict__}


# ---- latency ----------------------------------------------------------------------------------


class PredictedLatency:
    """A device metric predicted by a `LatencyPredictor` fitted on the space (an object, a file, or the
    name of a shipped one: `load_latency_predictor`).

    The predictor's metric names the record and its direction (`concepts.metric`):
    `decode_ms`, `prefill_ms` and `peak_mem_mib` are minimized, `throughput_tok_s` maximized.
    """

    expensive = False

    def __init__(self, predictor: LatencyPredictor | str | Path):
        from ..predict import LatencyPredictor, load_latency_predictor

        if not isinstance(predictor, LatencyPredictor):
            predictor = load_latency_predictor(predictor)  # a file, or a shipped predictor's name
        self.predictor = predictor
        self.file = Path(predictor.source_) if hasattr(predictor, "source_") else None
        self.metadata = self.predictor.metadata_
        try:
            chosen = metric(str(self.metadata.get("metric")))
        except BadInputError as err:
            raise BadInputError(f"{self.predictor.source}: predictor {err}") from None
        self.name, self.direction = chosen.field, chosen.direction

    def bind(self, problem: ProblemView) -> PredictedLatency:
        self.predictor.check_space(problem.space)
        return self

    def evaluate(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        return np.asarray(self.predictor.predict(list(configs)), dtype=float)

    def describe(self) -> dict[str, Any]:
        keys = ("space_id", "target", "fingerprint_id", "backend", "precision", "metric", "shapes")
        return {**self._identity(), **{k: self.metadata.get(k) for k in keys}}

    def _identity(self) -> dict[str, Any]:
        if self.file is not None:
            return {"kind": "predictor", "file": str(self.file), "sha256": file_sha256(self.file)}
        text = dumps(self.predictor.to_dict(), indent=None)  # the bytes `save` writes
        return {"kind": "predictor", "file": None, "sha256": hashlib.sha256(text.encode()).hexdigest()}

    def __repr__(self) -> str:
        return f"PredictedLatency({str(self.file) if self.file else self.predictor!r})"


# ---- accuracy ---------------------------------------------------------------------------------


class Perplexity:
    """Perplexity on held-out text, measured on the super-network (lower is better).

    `data`: None for the model's shipped `heldout.txt`; a text file (.txt, .jsonl, Alpaca .json)
    or a built-in corpus name; or a list of token ids. `max_tokens` bounds each evaluation.
    """

    name, direction, expensive = "perplexity", "min", True

    def __init__(self, data: str | Path | Sequence[int] | None = None, max_tokens: int = 2048):
        self.data = data
        self.max_tokens = _positive(max_tokens, "max_tokens")

    def bind(self, problem: ProblemView) -> AccuracyMeasure:
        supernet = problem.supernet
        if self.data is None:
            ids, source = load_heldout(supernet.source), f"{problem.model}:heldout"
        elif isinstance(self.data, (str, Path)):
            ids, source = tokenize(read_texts(str(self.data)), load_tokenizer(supernet.source), eos_id=None), str(self.data)
        else:
            ids = [int(i) for i in self.data]
            source = "token_ids:" + hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]
        return AccuracyMeasure(supernet, ids, "perplexity", source, self.max_tokens)

    def __repr__(self) -> str:
        return f"Perplexity(data={self.data!r}, max_tokens={self.max_tokens})"


class TaskAccuracy:
    """Multiple-choice accuracy (`acc_norm`, higher is better), measured on the super-network.

    `task`: None for the model's shipped `mc_task.jsonl`, or a JSONL task file
    (`{"context", "choices", "answer"}` lines). `max_examples` bounds each evaluation.
    """

    name, direction, expensive = "acc_norm", "max", True

    def __init__(self, task: str | Path | None = None, max_examples: int = 100):
        self.task = task
        self.max_examples = _positive(max_examples, "max_examples")

    def bind(self, problem: ProblemView) -> AccuracyMeasure:
        supernet = problem.supernet
        source = f"{problem.model}:task" if self.task is None else str(self.task)
        data = load_task(supernet.source, self.task)
        return AccuracyMeasure(supernet, data, "multiple_choice", source, self.max_examples)

    def __repr__(self) -> str:
        return f"TaskAccuracy(task={self.task!r}, max_examples={self.max_examples})"


class AccuracyMeasure:
    """Perplexity or multiple-choice accuracy of sub-networks inside a loaded super-network."""

    expensive = True

    def __init__(self, supernet, data, kind: str, source: str, limit: int):
        self.supernet, self.data, self.kind, self.source, self.limit = supernet, data, kind, source, limit
        spec = Perplexity if kind == "perplexity" else TaskAccuracy
        self.name, self.direction = spec.name, spec.direction
        self._model_sha256 = supernet.weights_sha256()

    def evaluate(self, configs: Sequence[SubnetConfig]) -> np.ndarray:
        if self.kind == "perplexity":
            return np.array([perplexity(self.supernet, c, self.data, max_tokens=self.limit).value for c in configs])
        return np.array([multiple_choice(self.supernet, c, self.data, max_examples=self.limit).value for c in configs])

    def describe(self) -> dict[str, Any]:
        limit = "max_tokens" if self.kind == "perplexity" else "max_examples"
        return {"kind": self.kind, "data": self.source, "model_sha256": self._model_sha256, limit: self.limit}


# ---- the CLI's spec strings -------------------------------------------------------------------


def objectives_from_specs(
    specs: Sequence[str], max_tokens: int = 2048, max_examples: int = 100
) -> list[Perplexity | TaskAccuracy | PredictedLatency | ModelSize]:
    """Objectives from spec strings: `accuracy[:SPEC]`, `latency:PREDICTOR_FILE`, `size`.

    SPEC: empty, `perplexity` or `heldout` (the model's held-out text), `task` (its multiple-choice
    task), a task JSONL file, or any other data file or built-in corpus (perplexity on its text).
    With no accuracy objective named, held-out perplexity comes first. Predictor files are read here.
    """
    parsed = [_parse_spec(s) for s in specs]
    if not any(kind == "accuracy" for kind, _ in parsed):
        parsed.insert(0, ("accuracy", ""))
    built = {"size": lambda _: ModelSize(), "latency": PredictedLatency}
    return [
        _accuracy(arg, max_tokens, max_examples) if kind == "accuracy" else built[kind](arg) for kind, arg in parsed
    ]


def _parse_spec(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    if kind not in ("accuracy", "latency", "size") or (kind == "latency" and not arg) or (kind == "size" and arg):
        raise BadInputError(f"objective {spec!r}: expected accuracy[:TASK_OR_DATA], latency:PREDICTOR_FILE or size")
    return kind, arg


def _accuracy(spec: str, max_tokens: int, max_examples: int) -> Perplexity | TaskAccuracy:
    if spec in ("", "perplexity", "heldout"):
        return Perplexity(None, max_tokens)
    if spec == "task":
        return TaskAccuracy(None, max_examples)
    if spec.endswith(".jsonl") and _looks_like_task(spec):
        return TaskAccuracy(spec, max_examples)
    return Perplexity(spec, max_tokens)


def _looks_like_task(path: str) -> bool:
    import json

    try:
        first = next((line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()), "")
        return isinstance(json.loads(first), dict) and "choices" in json.loads(first)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
