"""Measure an artifact on this device with the profiler's protocol, and compare with its prediction.

The timing is the profiler's own: `ArtifactBackend` (the `onnxruntime` backend opening the
artifact's ONNX file) measured by `Backend.measure_visits` (warm-up, repeats, median, IQR /
CV, fast end, re-measuring or flagging noisy figures, visits combined). Shapes, threads and
clock default to those the manifest's predictor was trained on, and the figure compared with
its prediction is the statistic it learned (`store.kept_figure`), so the error in % compares
like with like. A CUDA artifact is timed through IO binding (`runtime.OrtDecoder`): the KV cache
stays on the GPU between steps, and each step moves only token ids up and logits down, as a
deployment would (`io_binding` in the measured block says which way it ran). A GGUF artifact is
timed by the `llamacpp` backend's workloads on its own file (`llamacpp_backend.ArtifactBackend`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from ..concepts import CLOCKS, METRICS, check_choice, metric
from ..errors import BadInputError
from ..jsonfiles import checked_choice, checked_positive_integers, field_error, is_finite_number, is_integer
from ..profiler.backends import llamacpp_backend, onnxruntime_backend
from ..profiler.base import SHAPE_FIELDS, Backend, Shapes
from ..profiler.fingerprint import current_fingerprint
from ..profiler.stats import Protocol
from ..profiler.store import STATISTICS, kept_figure
from ..progress import Callback, report
from ..runtime import IO_BINDING_DEVICES, Artifact, open_artifact
from ..subnet_config import SubnetConfig



@dataclass(frozen=True)
class BenchSettings:
    """How an artifact is measured; `None` means the manifest predictor's setting, else the profiler's default.

    `shapes` is a whole `Shapes`, or a mapping of some of its fields (`{"prompt_len": 256}`)
    whose other fields come from the predictor (else `Shapes()`).
    """

    shapes: Shapes | Mapping[str, int] | None = None
    protocol: Protocol = Protocol(visits=3)
    threads: int | None = None
    clock: str | None = None

    def __post_init__(self) -> None:
        if self.shapes is not None and not isinstance(self.shapes, Shapes):
            _check_partial_shapes(self.shapes)
        if not isinstance(self.protocol, Protocol):
            raise BadInputError(f"expected a Protocol, got {type(self.protocol).__name__}", param="protocol")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise BadInputError(f"must be a positive integer, got {self.threads!r}", param="threads")
        if self.clock is not None:
            check_choice(self.clock, CLOCKS, "clock")

    def shapes_for(self, predicted: Mapping[str, Any]) -> Shapes:
        """The shapes to measure at, given the manifest's `predicted` block (maybe empty)."""
        if isinstance(self.shapes, Shapes):
            return self.shapes
        base = predicted.get("shapes") or Shapes().to_dict()
        return Shapes(**{**{k: base[k] for k in SHAPE_FIELDS}, **(self.shapes or {})})


def _check_partial_shapes(shapes: Any) -> None:
    if not isinstance(shapes, Mapping):
        raise BadInputError(f"expected a Shapes or a mapping of its fields, got {type(shapes).__name__}", param="shapes")
    unknown = sorted(set(shapes) - set(SHAPE_FIELDS))
    if unknown:
        raise BadInputError(f"unknown field(s) {unknown}; expected some of {list(SHAPE_FIELDS)}", param="shapes")
    for name, value in shapes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInputError(f"must be a positive integer, got {value!r}", param=name)


@dataclass(frozen=True)
class BenchResult:
    """The artifact at `directory` measured on this device: `measured` is the block `export` writes
    into its manifest (figures, where and how they were taken, `vs_predicted` when it has a prediction)."""

    directory: Path
    subnet_id: str
    measured: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """What `llamanas bench --json` prints."""
        return {"artifact": str(self.directory), "subnet_id": self.subnet_id, **self.measured}


def bench(artifact: Artifact | str | Path, settings: BenchSettings = BenchSettings(), *,
          callback: Callback = None) -> BenchResult:  # fmt: skip
    """Measure an artifact (an opened `Artifact`, or its directory: opened and checked) on this device."""
    opened = artifact if isinstance(artifact, Artifact) else open_artifact(artifact)
    report(callback, "bench", 0, 1, "artifact", message=f"measuring {opened.directory}")
    measured = bench_decoder(opened.directory, opened.manifest, settings)
    report(callback, "bench", 1, 1, "artifact", status="done")
    return BenchResult(opened.directory, opened.manifest["subnet_id"], measured)


def bench_decoder(directory: Path, manifest: dict[str, Any], settings: BenchSettings = BenchSettings()) -> dict[str, Any]:
    """Measure the artifact in `directory` described by `manifest`; returns the manifest's `measured` block."""
    predicted = checked_prediction(manifest.get("predicted"), f"{directory}/manifest.json")
    shapes = settings.shapes_for(predicted)
    threads = settings.threads or predicted.get("threads") or 1
    clock = settings.clock or predicted.get("clock") or "wall"
    artifact = Artifact(Path(directory), manifest)
    backend = artifact_backend(artifact, threads, clock, shapes)
    subnet = SubnetConfig.from_dict(manifest["subnet"], f"{directory}/manifest.json")
    backend.warm_up(subnet, shapes)
    figures = backend.measure_visits([subnet], shapes, settings.protocol)[0].to_dict()
    measured = {
        "fingerprint_id": current_fingerprint()["fingerprint_id"],
        "backend": backend.name,
        "precision": manifest["precision"],
        "device": manifest["device"],
        **({} if artifact.is_gguf else {"io_binding": manifest["device"] in IO_BINDING_DEVICES}),
        "threads": threads,
        "clock": clock,
        "shapes": shapes.to_dict(),
        "protocol": settings.protocol.to_dict(),
        **{k: v for k, v in figures.items() if k != "weights"},
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if predicted:
        measured["vs_predicted"] = compare_with_prediction(measured, predicted)
    return measured


def artifact_backend(artifact: Artifact, threads: int, clock: str, shapes: Shapes) -> Backend:
    """The profiler backend that times this kind of artifact, once it can run here at `shapes`."""
    backend = artifact_backend_class(artifact.is_gguf)
    backend.check_shapes(shapes)
    backend.check_available(artifact.manifest["device"], artifact.manifest["precision"])
    return backend(artifact, threads, clock=clock)


def artifact_backend_class(gguf: bool) -> type[Backend]:
    """The backend class timing a GGUF artifact (llama.cpp) or an ONNX one."""
    return (llamacpp_backend if gguf else onnxruntime_backend).ArtifactBackend


MAX_BENCH_TOKENS = 1 << 16  # batch x (prompt + context + generated): far above any bench, far below a runaway allocation


def checked_prediction(predicted: Any, source: str) -> dict[str, Any]:
    """The manifest's `predicted` block (empty when null), every field `bench` uses checked like a CLI
    option: an artifact is content anyone may have edited and re-sealed."""
    import os

    if predicted is None:
        return {}
    if not isinstance(predicted, dict):
        raise field_error(source, "predicted", "an object or null", predicted)
    checked_choice(predicted.get("metric"), sorted(METRICS), source, "predicted.metric")
    value = predicted.get("value")
    if not is_finite_number(value) or value <= 0:
        raise field_error(source, "predicted.value", "a positive number", value)
    threads = predicted.get("threads")
    cores = os.cpu_count() or 1
    if threads is not None and (not is_integer(threads) or not 1 <= threads <= cores):
        expected = f"an integer from 1 to this machine's {cores} logical cores"
        raise field_error(source, "predicted.threads", expected, threads)
    for field, choices in (("clock", CLOCKS), ("statistic", STATISTICS)):
        if predicted.get(field) is not None:
            checked_choice(predicted[field], choices, source, f"predicted.{field}")
    if predicted.get("shapes") is not None:
        _check_predicted_shapes(predicted["shapes"], source)
    return predicted


def _check_predicted_shapes(shapes: Any, source: str) -> None:
    checked_positive_integers(shapes, SHAPE_FIELDS, source, "predicted.shapes")
    tokens = shapes["batch_size"] * (shapes["prompt_len"] + shapes["context_len"] + shapes["gen_len"])
    if tokens > MAX_BENCH_TOKENS:
        expected = f"at most {MAX_BENCH_TOKENS:,} tokens in all (batch x lengths)"
        raise field_error(source, "predicted.shapes", expected, shapes)


def compare_with_prediction(measured: dict[str, Any], predicted: dict[str, Any]) -> dict[str, Any]:
    """Error of the prediction in % of the measured figure, for the predictor's metric."""
    field_name = metric(predicted["metric"]).field
    figure = measured.get(field_name)
    value = None if figure is None else kept_figure(figure, predicted.get("statistic") or "median")
    setup = ("backend", "precision", "device", "threads", "fingerprint_id")
    same_setup = all(predicted.get(k) in (None, measured.get(k)) for k in setup)
    return {
        "metric": field_name,
        "predicted": predicted["value"],
        "measured": value,
        "error_pct": None if value in (None, 0) else (predicted["value"] - value) / value * 100,
        "same_setup": same_setup,
    }
