"""`llamanas run`: the whole loop on one device, each stage's output a file in one run directory.

    profile (reuse a shipped profile of this device; on a new device, measure a few sub-networks
    and transfer another device's predictor of the same space and backend; else measure)
    -> fit the latency predictor -> the deployed format: profile a few sub-networks with the
    backend that runs the artifact (onnxruntime for ONNX, llamacpp for GGUF) at the export
    precision and fit its predictor with transfer from the first -> search on the deployed
    format's latency under a budget -> export the best sub-network within the budget -> verify
    and measure the artifact (predicted vs measured is then like for like) -> measure the full
    network and the winner the way the deployed-format profile was measured -> one summary table.

Each stage reads the previous stage's files, so a rerun of the same command with the same
`--out` skips the stages whose output is already there and resumes the interrupted one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .concepts import CLOCKS, DEVICES, EXPORT_FORMATS, EXPORT_PRECISIONS, GGUF_PRECISIONS, check_choice, metric
from .errors import BadInputError
from .evaluate import load_heldout, perplexity
from .exporter import BenchSettings, ExportSettings, GGUFSettings, export, export_gguf
from .jsonfiles import check_out_dir, read_json, write_json
from .onnx_model.artifact import read_manifest
from .onnx_model.graphs import check_precision
from .profiler import (
    ProfileSettings, Protocol, Shapes, find_matching_profile, measure_subnets, profile, target_name_from
)  # fmt: skip
from .profiler.store import kept_figure
from .progress import Callback, report
from .run_summary import Measured, SearchOutcome, summarize
from .search import ALGORITHMS, Perplexity, PredictedLatency, SearchProblem, minimize
from .search.results import choose
from .space import load_space
from .subnet_config import SubnetConfig

LATENCY_METRIC = "decode_ms"
STAGES = 7
DEPLOYED = {"onnx": ("onnxruntime", "int8"), "gguf": ("llamacpp", "q8_0")}  # format: the backend timing it, default precision
HELDOUT_TOKENS = 4096  # the export's verification data: full, winner and artifact share one perplexity
RUN_FILE, SUMMARY_FILE = "run.json", "summary.json"
_ADDED_SINCE_0_1 = {"export_format": "onnx", "max_cv": Protocol.max_cv}


@dataclass(frozen=True)
class RunSettings:
    """Everything one run of the loop depends on (stored in `run.json`: the same settings resume)."""

    model: str = "tiny"
    space: str = "tiny"
    backend: str = "torch"  # the profiler backend the latency predictor models
    backend_precision: str = "fp32"  # that backend's precision
    export_format: str = "onnx"
    export_precision: str | None = None  # None: the format's default (`DEPLOYED`)
    device: str = "cpu"
    max_latency_ms: float | None = None
    speedup: float = 1.5  # without max_latency_ms: budget = full network's predicted latency / speedup
    samples: int = 60  # sub-networks to profile when no matching profile of this device exists
    transfer_samples: int = 12  # ... when another device's predictor of the same space and backend exists (2 held out)
    deployed_samples: int = 8  # deployed-format sub-networks profiled in the run (2 held out); 0: search on `backend`
    visits: int = 3
    max_cv: float = Protocol.max_cv  # a figure noisier than this is re-measured, then flagged (and left out of fits)
    min_profile_subnets: int = 40
    algorithm: str = "nsga2"
    population: int = 20
    evaluations: int = 60
    eval_tokens: int = 2048
    seed: int = 0
    threads: int = 1
    clock: str = "cpu"

    def __post_init__(self) -> None:
        check_choice(self.device, DEVICES, "device")
        check_choice(self.export_format, EXPORT_FORMATS, "export_format")
        if self.export_precision is None:
            object.__setattr__(self, "export_precision", DEPLOYED[self.export_format][1])
        self._check_export_precision()  # before any stage runs, not at the export
        check_choice(self.clock, CLOCKS, "clock")
        self.protocol  # noqa: B018 -- a bad visits / max_cv refused now, not when the first stage measures
        if self.max_latency_ms is not None and not (math.isfinite(self.max_latency_ms) and self.max_latency_ms > 0):
            raise BadInputError(f"must be a positive finite number of ms, got {self.max_latency_ms}", param="max_latency_ms")
        if not (math.isfinite(self.speedup) and self.speedup >= 1):
            raise BadInputError(f"must be a finite number >= 1, got {self.speedup}", param="speedup")
        from .predict.transfer import MIN_TRANSFER_SUBNETS

        if self.transfer_samples < MIN_TRANSFER_SUBNETS:
            raise BadInputError(f"must be >= {MIN_TRANSFER_SUBNETS}, got {self.transfer_samples}", param="transfer_samples")
        if self.deployed_samples and self.deployed_samples < MIN_TRANSFER_SUBNETS:
            raise BadInputError(f"must be 0 or >= {MIN_TRANSFER_SUBNETS}, got {self.deployed_samples}", param="deployed_samples")

    def _check_export_precision(self) -> None:
        if self.export_format == "gguf":
            check_choice(self.export_precision, GGUF_PRECISIONS, "export_precision")
            if self.device != "cpu":
                raise BadInputError(f"a GGUF artifact runs in llama.cpp on the CPU, not on {self.device}", param="device")
            return
        check_choice(self.export_precision, EXPORT_PRECISIONS, "export_precision")
        try:
            check_precision(self.device, self.export_precision)
        except BadInputError as err:
            raise BadInputError(err.detail, param="export_precision") from None

    @property
    def protocol(self) -> Protocol:
        """How every stage measures: `visits` turns, figures noisier than `max_cv` flagged."""
        return Protocol(visits=self.visits, max_cv=self.max_cv)

    @property
    def deployed_backend(self) -> str:
        """The profiler backend that times the artifact this run exports."""
        return DEPLOYED[self.export_format][0]


@dataclass(frozen=True)
class RunResult:
    directory: Path
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.summary


def run(settings: RunSettings, *, out: str | Path, callback: Callback = None) -> RunResult:
    """Run every stage in `out` (resuming what a previous run with the same settings left there)."""
    from .model.supernet import load_supernet

    out = Path(out)
    space = load_space(settings.space)
    _check_run_dir(settings, out)
    stage = _Stages(callback)
    profile = _stage_profile(settings, out, space, stage)
    supernet = load_supernet(settings.model, space)
    backend_predictor = _stage_fit(settings, out, space, supernet, profile, stage)
    deployed = _stage_deployed(settings, out, space, supernet, backend_predictor, stage)
    predictor_path = Path(deployed["predictor"]) if deployed else backend_predictor
    predictor = _load_predictor(predictor_path, space)
    budget = settings.max_latency_ms or float(predictor.predict([space.largest])[0]) / settings.speedup
    search = _stage_search(settings, out, space, supernet, predictor_path, budget, stage)
    latency = predictor.metadata_["metric"]
    chosen = choose(search.front, search.accuracy_name, search.accuracy_direction, latency, budget).subnet
    manifest = _stage_export(settings, out, space, supernet, chosen, predictor_path, stage)
    measured = _stage_measure(settings, predictor, [space.largest, chosen], space.anchor, stage)
    perplexities = _heldout_perplexities(settings, supernet, [space.largest, chosen])
    stage(7, "summary")
    summary = summarize(out, asdict(settings), space=space, supernet=supernet, profile=profile, deployed=deployed,
                        predictor=predictor, predictor_path=predictor_path, budget_ms=budget, search=search,
                        chosen=chosen, manifest=manifest, measured=measured, heldout_tokens=HELDOUT_TOKENS,
                        perplexities=perplexities)  # fmt: skip
    write_json(out / SUMMARY_FILE, summary)
    return RunResult(out, summary)


class _Stages:
    """Announces each stage as '[i/6] ...' through the callback, and passes the callback on."""

    def __init__(self, callback: Callback):
        self.callback = callback

    def __call__(self, number: int, text: str) -> None:
        report(self.callback, "run", number, STAGES, "stage", message=f"[{number}/{STAGES}] {text}")

    def log(self, text: str) -> None:
        report(self.callback, "run", message=text)


# ---- stages ------------------------------------------------------------------------------
def _stage_profile(settings: RunSettings, out: Path, space, stage: _Stages) -> dict[str, Any]:
    """A profile of this device for the backend: a shipped/earlier one if it matches; else, when another
    device's predictor of the same space and backend exists, `transfer_samples` measured now to transfer
    it; else `samples` measured now. Returns {dir, reused, samples, transfer_from}."""
    from .predict.transfer import find_transfer_source

    setup = {"backend": settings.backend, "precision": settings.backend_precision, "device": settings.device,
             "threads": settings.threads, "clock": settings.clock}  # fmt: skip
    shipped = find_matching_profile(space, LATENCY_METRIC, **setup, min_subnets=settings.min_profile_subnets)
    if shipped is not None:
        stage(1, f"profile: reusing {shipped} (same device fingerprint, backend, shapes)")
        return {"dir": str(shipped), "reused": True, "samples": None, "transfer_from": None}
    source = find_transfer_source(space, LATENCY_METRIC, **setup)
    profile_dir = out / "profile"
    samples = settings.transfer_samples if source else settings.samples
    why = f"; transferring {source['name']} ({source['target']})" if source else ""
    stage(1, f"profile: no matching profile of this device{why}; measuring {samples} sub-networks into {profile_dir}")
    _measure_profile(settings, out, space, settings.backend, settings.backend_precision, samples, profile_dir, stage)
    return {"dir": str(profile_dir), "reused": False, "samples": samples, "transfer_from": source["path"] if source else None,
            "transfer_from_name": source["name"] if source else None}  # fmt: skip


def _measure_profile(settings: RunSettings, out: Path, space, backend: str, precision: str, samples: int, profile_dir: Path,
                     stage: _Stages, shapes: Shapes = Shapes()) -> None:  # fmt: skip
    profile_settings = ProfileSettings(
        backend=backend,
        shapes=shapes,
        precision=precision,
        device=settings.device,
        samples=samples,
        seed=settings.seed,
        threads=settings.threads,
        clock=settings.clock,
        protocol=settings.protocol,
    )
    target = target_name_from(f"run-{out.resolve().name}")  # "runs/my run" profiles target run-my-run
    profile(settings.model, space, profile_settings, target=target, out=profile_dir, callback=stage.callback)


def _stage_fit(settings: RunSettings, out: Path, space, supernet, profile: dict[str, Any], stage: _Stages) -> Path:
    path = out / f"predictor-{LATENCY_METRIC}.json"
    if path.is_file():
        stage(2, f"fit: reusing {path}")
        return path
    from .predict import FitSettings, fit

    source = profile.get("transfer_from")
    via = f" with transfer from {profile['transfer_from_name']}" if source else ""
    stage(2, f"fit: XGBoost {LATENCY_METRIC} predictor on {profile['dir']}{via}")
    result = fit(profile["dir"], LATENCY_METRIC, FitSettings(seed=settings.seed, learning_curve=False), space=space,
                 supernet=supernet, backend=settings.backend, precision=settings.backend_precision, transfer_from=source,
                 callback=stage.callback)  # fmt: skip
    _log_fit(stage, result)
    return result.predictor.save(path)


def _log_fit(stage: _Stages, result) -> None:
    metrics = result.predictor.metadata_["test_metrics"]
    d = result.data_summary
    stage.log(f"      held-out ({d['n_test']} sub-networks, fitted on {d['n_train']}): MAPE {metrics['mape_pct']:.2f}%, "
              f"{metrics['within_10_pct']:.0f}% within ±10%")  # fmt: skip


def _stage_deployed(settings: RunSettings, out: Path, space, supernet, backend_predictor: Path,
                    stage: _Stages) -> dict[str, Any] | None:  # fmt: skip
    """The deployed format's predictor (its backend at the export precision): `deployed_samples`
    sub-networks measured now, in this run directory, with this installation's exporter, and a fit
    with transfer from the backend's predictor. None when `deployed_samples` is 0 (or the backend
    already is the deployed format).

    A shipped profile of the deployed format is not reused: its records do not say which exporter
    made the graphs they timed, and a faster exporter (fused attention, another quantizer setting)
    changes the deployed latency without changing the device fingerprint — the dev machine's
    shipped int8 profile (0.8-2.2 ms) predicted 0.95 ms for an artifact measured at 0.32 ms."""
    backend, precision = settings.deployed_backend, settings.export_precision
    if not settings.deployed_samples or (settings.backend, settings.backend_precision) == (backend, precision):
        stage(3, "deployed format: searching on the profiled backend's latency")
        return None
    path = out / f"predictor-deployed-{LATENCY_METRIC}.json"
    info_path = out / "deployed.json"
    if path.is_file() and info_path.is_file():
        stage(3, f"deployed format: reusing {path}")
        return read_json(info_path, "deployed-format record")
    from .predict import FitSettings, fit

    profile_dir = out / "profile-deployed"
    stage(3, f"deployed format: measuring {settings.deployed_samples} sub-networks with {backend} {precision} "
             f"into {profile_dir}, then fitting with transfer from {backend_predictor.name}")  # fmt: skip
    # at the lengths the source predictor learned (a reused profile's may not be the default ones): a transfer needs them
    shapes = Shapes(**_load_predictor(backend_predictor, space).metadata_["shapes"])
    _measure_profile(settings, out, space, backend, precision, settings.deployed_samples, profile_dir, stage, shapes)
    result = fit(profile_dir, LATENCY_METRIC, FitSettings(seed=settings.seed, learning_curve=False), space=space,
                 supernet=supernet, backend=backend, precision=precision, transfer_from=backend_predictor,
                 callback=stage.callback)  # fmt: skip
    _log_fit(stage, result)
    result.predictor.save(path)
    info = {"dir": str(profile_dir), "reused": False, "backend": backend, "precision": precision,
            "n_subnets": result.data_summary["n_subnets"], "predictor": str(path),
            "transfer_from": str(backend_predictor)}  # fmt: skip
    write_json(info_path, info)
    return info


def _stage_search(settings: RunSettings, out: Path, space, supernet, predictor_path: Path, budget_ms: float,
                  stage: _Stages) -> SearchOutcome:  # fmt: skip
    stage(4, f"search: {settings.algorithm}, {settings.evaluations} evaluations, latency budget {budget_ms:.2f} ms")
    accuracy = Perplexity(max_tokens=settings.eval_tokens)
    problem = SearchProblem(supernet, space, [accuracy, PredictedLatency(predictor_path)], max_latency_ms=budget_ms)
    algorithm = ALGORITHMS[settings.algorithm](population=settings.population)
    result = minimize(problem, algorithm, evaluations=settings.evaluations, seed=settings.seed, out=out / "search",
                      callback=stage.callback)  # fmt: skip
    measure = problem.accuracy
    return SearchOutcome(result.front, result.full, measure.name, measure.direction, result.directory, result.evaluations)


def _stage_export(settings: RunSettings, out: Path, space, supernet, chosen: SubnetConfig, predictor_path: Path,
                  stage: _Stages) -> dict[str, Any]:  # fmt: skip
    artifact = out / "artifact"
    manifest_path = artifact / "manifest.json"
    if manifest_path.is_file():
        manifest = read_manifest(artifact)  # the one check every artifact reader makes
        if manifest.get("subnet_id") == chosen.id and manifest.get("precision") == settings.export_precision:
            stage(5, f"export: reusing {artifact}")
            return manifest
        raise BadInputError(f"{artifact}: holds another artifact; use a new run directory")
    stage(5, f"export: {chosen.id} ({chosen.num_layers} layers) to {settings.export_format.upper()} "
             f"{settings.export_precision}, verify, bench")  # fmt: skip
    bench = BenchSettings(protocol=settings.protocol, threads=settings.threads, clock=settings.clock)
    if settings.export_format == "gguf":
        how = GGUFSettings(precision=settings.export_precision, max_eval_tokens=HELDOUT_TOKENS)
        result = export_gguf(supernet, space, chosen, how, out=artifact, predictor=predictor_path, bench=bench,
                             callback=stage.callback)  # fmt: skip
    else:
        how = ExportSettings(precision=settings.export_precision, device=settings.device, max_eval_tokens=HELDOUT_TOKENS)
        result = export(supernet, space, chosen, how, out=artifact, predictor=predictor_path, bench=bench,
                        callback=stage.callback)  # fmt: skip
    return result.manifest


def _stage_measure(settings: RunSettings, predictor, subnets: list[SubnetConfig], anchor: SubnetConfig,
                   stage: _Stages) -> Measured:  # fmt: skip
    """Measure the full network and the winner as the profile was measured, in turns (`visits`); beside the
    profile's anchor when the predictor learned drift-corrected figures, so they compare like for like."""
    meta = predictor.metadata_
    stage(6, f"measure: full network and winner with the {meta['backend']} {meta['precision']} backend (the profile's protocol)")
    how = ProfileSettings(backend=meta["backend"], precision=meta["precision"], device=meta["device"],
                          threads=meta["threads"], seed=settings.seed, clock=meta["clock"], shapes=Shapes(**meta["shapes"]),
                          protocol=settings.protocol)  # fmt: skip
    corrected = meta.get("drift_corrected_by")
    measured = subnets + [anchor] if corrected else subnets
    figures = [m.to_dict() for m in measure_subnets(settings.model, measured, how)]
    if not corrected:
        return Measured(figures, None)
    anchor_now = kept_figure(figures[-1][metric(meta["metric"]).field], meta.get("statistic") or "median")
    return Measured(figures[: len(subnets)], corrected["scale"] / anchor_now)


def _heldout_perplexities(settings: RunSettings, supernet, subnets: list[SubnetConfig]) -> list[float]:
    """Perplexity on the same held-out tokens the export verified the artifact on."""
    tokens = load_heldout(settings.model, HELDOUT_TOKENS)
    return [perplexity(supernet, cfg, tokens).value for cfg in subnets]


# ---- helpers -----------------------------------------------------------------------------------
def _check_run_dir(settings: RunSettings, out: Path) -> None:
    """A run directory belongs to one set of settings: the same ones resume, others are refused; a
    directory that holds no run.json must not exist or be empty (`jsonfiles.check_out_dir`)."""
    path = out / RUN_FILE
    wanted = asdict(settings)
    if path.is_file():
        stored = read_json(path, "run settings file")
        if isinstance(stored, dict):  # a setting added since the directory was made: it ran with the default
            stored = {**_ADDED_SINCE_0_1, **stored}
        if stored != wanted:
            changed = sorted(k for k in wanted if not isinstance(stored, dict) or stored.get(k) != wanted[k])
            raise BadInputError(f"{out}: holds a run with other settings ({', '.join(changed)}); use a new run directory")
        return
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, wanted)


def _load_predictor(path: Path, space):
    from .predict import LatencyPredictor

    predictor = LatencyPredictor.load(path)
    predictor.check_space(space)
    return predictor
