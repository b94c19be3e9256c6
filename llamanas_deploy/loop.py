"""`llamanas run`: the whole loop on one device, each stage's output a file in one run directory.

    profile (reuse a shipped profile of this device; on a new device, measure a few sub-networks
    and transfer another device's predictor of the same space and backend; else measure)
    -> fit the latency predictor -> the deployed format: profile a few sub-networks with
    onnxruntime at the export precision and fit its predictor with transfer from the first -> search on the deployed format's latency under a budget -> export
    the best sub-network within the budget -> verify and measure the artifact (predicted vs
    measured is then like for like) -> measure the full network and the winner the way the
    deployed-format profile was measured -> one summary table.

Each stage reads the previous stage's files, so a rerun of the same command with the same
`--out` skips the stages whose output is already there and resumes the interrupted one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .concepts import CLOCKS, DEVICES, EXPORT_PRECISIONS, check_choice
from .errors import BadInputError
from .jsonfiles import check_out_dir, read_json, write_json
from .onnx_model.graphs import check_precision
from .progress import Callback, report
from .subnet_config import SubnetConfig

PROFILE_DIRS = (Path("hardware_profiles"), Path(__file__).resolve().parent.parent / "hardware_profiles")
LATENCY_METRIC = "decode_ms"
STAGES = 7
DEPLOYED_BACKEND = "onnxruntime"  # the profiler backend that times what `export` deploys
UNRELIABLE_MAPE_PCT = 25.0  # a predictor's held-out error beyond this: its latencies are noise, and the summary says so
HELDOUT_TOKENS = 4096  # the export's verification data: full, winner and artifact share one perplexity
RUN_FILE, SUMMARY_FILE = "run.json", "summary.json"


@dataclass(frozen=True)
class RunSettings:
    """Everything one run of the loop depends on (stored in `run.json`: the same settings resume)."""

    model: str = "tiny"
    space: str = "tiny"
    backend: str = "torch"  # the profiler backend the latency predictor models
    backend_precision: str = "fp32"  # that backend's precision
    export_precision: str = "int8"
    device: str = "cpu"
    max_latency_ms: float | None = None
    speedup: float = 1.5  # without max_latency_ms: budget = full network's predicted latency / speedup
    samples: int = 60  # sub-networks to profile when no matching profile of this device exists
    transfer_samples: int = 12  # ... when another device's predictor of the same space and backend exists (2 held out)
    deployed_samples: int = 8  # deployed-format sub-networks profiled in the run (2 held out); 0: search on `backend`
    visits: int = 3
    min_profile_subnets: int = 40
    algorithm: str = "nsga2"
    population: int = 20
    evaluations: int = 60
    eval_tokens: int = 2048
    seed: int = 0
    threads: int = 1
    clock: str = "cpu"

    def __post_init__(self) -> None:
        check_choice(self.export_precision, EXPORT_PRECISIONS, "export_precision")
        try:
            check_precision(self.device, self.export_precision)  # before any stage runs, not at the export
        except BadInputError as err:
            raise BadInputError(err.detail, param="export_precision") from None
        check_choice(self.device, DEVICES, "device")
        check_choice(self.clock, CLOCKS, "clock")
        if self.max_latency_ms is not None and not (math.isfinite(self.max_latency_ms) and self.max_latency_ms > 0):
            raise BadInputError(f"must be a positive finite number of ms, got {self.max_latency_ms}", param="max_latency_ms")
        if not (math.isfinite(self.speedup) and self.speedup >= 1):
            raise BadInputError(f"must be a finite number >= 1, got {self.speedup}", param="speedup")
        from .predict.transfer import MIN_TRANSFER_SUBNETS

        if self.transfer_samples < MIN_TRANSFER_SUBNETS:
            raise BadInputError(f"must be >= {MIN_TRANSFER_SUBNETS}, got {self.transfer_samples}", param="transfer_samples")
        if self.deployed_samples and self.deployed_samples < MIN_TRANSFER_SUBNETS:
            raise BadInputError(f"must be 0 or >= {MIN_TRANSFER_SUBNETS}, got {self.deployed_samples}", param="deployed_samples")


@dataclass(frozen=True)
class RunResult:
    directory: Path
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return self.summary


def run(settings: RunSettings, out: str | Path, callback: Callback = None) -> RunResult:
    """Run every stage in `out` (resuming what a previous run with the same settings left there)."""
    from .model.supernet import SuperNetwork
    from .space import load_space

    out = Path(out)
    space = load_space(settings.space)
    _check_run_dir(settings, out)
    stage = _Stages(callback)
    profile = _stage_profile(settings, out, space, stage)
    supernet = SuperNetwork.load(settings.model)
    supernet.check_space(space)
    backend_predictor = _stage_fit(settings, out, space, supernet, profile, stage)
    deployed = _stage_deployed(settings, out, space, supernet, backend_predictor, stage)
    predictor_path = Path(deployed["predictor"]) if deployed else backend_predictor
    predictor = _load_predictor(predictor_path, space)
    budget = settings.max_latency_ms or float(predictor.predict([space.largest])[0]) / settings.speedup
    search = _stage_search(settings, out, space, supernet, predictor_path, budget, stage)
    chosen = choose(search.front, search.accuracy_name, search.accuracy_direction, predictor.metadata_["metric"], budget)
    manifest = _stage_export(settings, out, space, supernet, chosen, predictor_path, stage)
    measured = _stage_measure(settings, predictor, [space.largest, chosen], space.anchor, stage)
    perplexities = _heldout_perplexities(settings, supernet, [space.largest, chosen])
    stage(7, "summary")
    summary = _summary(settings, out, space, supernet, profile, predictor, budget, search, chosen, manifest, measured,
                       perplexities, predictor_path, deployed)  # fmt: skip
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
    shipped = find_matching_profile(settings, space)
    if shipped is not None:
        stage(1, f"profile: reusing {shipped} (same device fingerprint, backend, shapes)")
        return {"dir": str(shipped), "reused": True, "samples": None, "transfer_from": None}
    source = find_transfer_source(settings, space)
    profile_dir = out / "profile"
    samples = settings.transfer_samples if source else settings.samples
    why = f"; transferring {source['name']} ({source['target']})" if source else ""
    stage(1, f"profile: no matching profile of this device{why}; measuring {samples} sub-networks into {profile_dir}")
    _measure_profile(settings, out, space, settings.backend, settings.backend_precision, samples, profile_dir, stage)
    return {"dir": str(profile_dir), "reused": False, "samples": samples, "transfer_from": source["path"] if source else None,
            "transfer_from_name": source["name"] if source else None}  # fmt: skip


def _measure_profile(settings: RunSettings, out: Path, space, backend: str, precision: str, samples: int, profile_dir: Path,
                     stage: _Stages) -> None:  # fmt: skip
    from .profiler import ProfileSettings, Protocol, profile
    from .profiler.runner import target_name_from

    profile_settings = ProfileSettings(
        backend=backend,
        precision=precision,
        device=settings.device,
        samples=samples,
        seed=settings.seed,
        threads=settings.threads,
        clock=settings.clock,
        protocol=Protocol(visits=settings.visits),
    )
    target = target_name_from(f"run-{out.resolve().name}")  # "runs/my run" profiles target run-my-run
    profile(settings.model, space, profile_settings, target=target, out=profile_dir, callback=stage.callback)


def find_matching_profile(settings: RunSettings, space, backend: str | None = None, precision: str | None = None,
                          min_subnets: int | None = None) -> Path | None:  # fmt: skip
    """The first profile directory measured on this device with enough usable records for the run
    (default: of the run's backend and precision, at least `min_profile_subnets`)."""
    from .predict.dataset import load_profile_data
    from .profiler.fingerprint import current_fingerprint

    backend, precision = backend or settings.backend, precision or settings.backend_precision
    minimum = settings.min_profile_subnets if min_subnets is None else min_subnets
    here = current_fingerprint()["fingerprint_id"]
    for root in PROFILE_DIRS:
        for candidate in sorted(root.glob("*/fingerprint.json")) if root.is_dir() else []:
            try:
                data = load_profile_data(candidate.parent, LATENCY_METRIC, space, backend, precision, min_subnets=1)
            except BadInputError:
                continue
            setting = data.setting
            if (
                data.fingerprint["fingerprint_id"] == here
                and setting["device"] == settings.device
                and setting["threads"] == settings.threads
                and setting["clock"] == settings.clock
                and len(data.y) >= minimum
            ):
                return candidate.parent
    return None


def find_transfer_source(settings: RunSettings, space) -> dict[str, Any] | None:
    """A shipped predictor of another device for the run's space, backend, precision, device, threads,
    clock and default lengths (the one with the lowest held-out MAPE), or None."""
    from dataclasses import asdict as as_dict

    from .predict import list_latency_predictors
    from .profiler import Shapes
    from .profiler.fingerprint import current_fingerprint

    here = current_fingerprint()["fingerprint_id"]
    wanted = {"space_id": space.id, "backend": settings.backend, "precision": settings.backend_precision,
              "metric": LATENCY_METRIC, "device": settings.device, "threads": settings.threads, "clock": settings.clock,
              "shapes": as_dict(Shapes())}  # fmt: skip
    try:
        rows = list_latency_predictors()
    except BadInputError:
        return None
    fits = [r for r in rows if r["fingerprint_id"] != here and all(r.get(k) == v for k, v in wanted.items())]
    return min(fits, key=lambda r: (r["test_mape_pct"] is None, r["test_mape_pct"] or 0.0, r["name"]), default=None)


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
                 model=supernet, backend=settings.backend, precision=settings.backend_precision, transfer_from=source,
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
    """The deployed format's predictor (onnxruntime at the export precision): `deployed_samples`
    sub-networks measured now, in this run directory, with this installation's exporter, and a fit
    with transfer from the backend's predictor. None when `deployed_samples` is 0 (or the backend
    already is the deployed format).

    A shipped profile of the deployed format is not reused: its records do not say which exporter
    made the graphs they timed, and a faster exporter (fused attention, another quantizer setting)
    changes the deployed latency without changing the device fingerprint — the dev machine's
    shipped int8 profile (0.8-2.2 ms) predicted 0.95 ms for an artifact measured at 0.32 ms."""
    precision = settings.export_precision
    if not settings.deployed_samples or (settings.backend, settings.backend_precision) == (DEPLOYED_BACKEND, precision):
        stage(3, "deployed format: searching on the profiled backend's latency")
        return None
    path = out / f"predictor-deployed-{LATENCY_METRIC}.json"
    info_path = out / "deployed.json"
    if path.is_file() and info_path.is_file():
        stage(3, f"deployed format: reusing {path}")
        return read_json(info_path, "deployed-format record")
    from .predict import FitSettings, fit

    profile_dir = out / "profile-deployed"
    stage(3, f"deployed format: measuring {settings.deployed_samples} sub-networks with {DEPLOYED_BACKEND} {precision} "
             f"into {profile_dir}, then fitting with transfer from {backend_predictor.name}")  # fmt: skip
    _measure_profile(settings, out, space, DEPLOYED_BACKEND, precision, settings.deployed_samples, profile_dir, stage)
    result = fit(profile_dir, LATENCY_METRIC, FitSettings(seed=settings.seed, learning_curve=False), space=space,
                 model=supernet, backend=DEPLOYED_BACKEND, precision=precision, transfer_from=backend_predictor,
                 callback=stage.callback)  # fmt: skip
    _log_fit(stage, result)
    result.predictor.save(path)
    info = {"dir": str(profile_dir), "reused": False, "backend": DEPLOYED_BACKEND, "precision": precision,
            "n_subnets": result.data_summary["n_subnets"], "predictor": str(path),
            "transfer_from": str(backend_predictor)}  # fmt: skip
    write_json(info_path, info)
    return info


@dataclass
class SearchOutcome:
    front: list[dict[str, Any]]
    full: dict[str, Any]
    accuracy_name: str
    accuracy_direction: str
    out_dir: Path
    evaluations: int


def _stage_search(settings: RunSettings, out: Path, space, supernet, predictor_path: Path, budget_ms: float,
                  stage: _Stages) -> SearchOutcome:  # fmt: skip
    from .search import ALGORITHMS, Perplexity, PredictedLatency, SearchProblem, minimize

    stage(4, f"search: {settings.algorithm}, {settings.evaluations} evaluations, latency budget {budget_ms:.2f} ms")
    accuracy = Perplexity(max_tokens=settings.eval_tokens)
    problem = SearchProblem(supernet, space, [accuracy, PredictedLatency(predictor_path)], max_latency_ms=budget_ms)
    algorithm = ALGORITHMS[settings.algorithm](population=settings.population)
    result = minimize(problem, algorithm, evaluations=settings.evaluations, seed=settings.seed, out=out / "search",
                      callback=stage.callback)  # fmt: skip
    measure = problem.accuracy
    return SearchOutcome(result.front, result.full, measure.name, measure.direction, result.out_dir, result.evaluations)


def choose(front: list[dict[str, Any]], accuracy: str, direction: str, latency: str, budget_ms: float) -> SubnetConfig:
    """The most accurate front member whose predicted latency is within the budget."""
    feasible = [e for e in front if e["objectives"][latency] <= budget_ms]
    if not feasible:
        raise BadInputError(f"no sub-network found within the latency budget of {budget_ms:.3f} ms",
                            param="max_latency_ms")  # fmt: skip
    sign = -1.0 if direction == "max" else 1.0
    best = min(feasible, key=lambda e: (sign * e["objectives"][accuracy], e["objectives"][latency]))
    return SubnetConfig.from_dict(best["subnet"], "front")


def _stage_export(settings: RunSettings, out: Path, space, supernet, chosen: SubnetConfig, predictor_path: Path,
                  stage: _Stages) -> dict[str, Any]:  # fmt: skip
    from .exporter import BenchSettings, ExportSettings, export
    from .profiler import Protocol

    artifact = out / "artifact"
    manifest_path = artifact / "manifest.json"
    if manifest_path.is_file():
        from .onnx_model.artifact import read_manifest

        manifest = read_manifest(artifact)  # the one check every artifact reader makes
        if manifest.get("subnet_id") == chosen.id and manifest.get("precision") == settings.export_precision:
            stage(5, f"export: reusing {artifact}")
            return manifest
        raise BadInputError(f"{artifact}: holds another artifact; use a new run directory")
    stage(5, f"export: {chosen.id} ({chosen.num_layers} layers) to ONNX {settings.export_precision}, verify, bench")
    export_settings = ExportSettings(precision=settings.export_precision, device=settings.device,
                                     max_eval_tokens=HELDOUT_TOKENS)  # fmt: skip
    bench = BenchSettings(protocol=Protocol(visits=settings.visits), threads=settings.threads, clock=settings.clock)
    result = export(supernet, space, chosen, artifact, export_settings, predictor=predictor_path, bench=bench,
                    callback=stage.callback)  # fmt: skip
    return result.manifest


@dataclass(frozen=True)
class Measured:
    figures: list[dict[str, Any]]  # one record's figures per sub-network
    speed_factor: float | None  # the predictor's anchor scale / the anchor now: figures x this = at the profile's speed


def _stage_measure(settings: RunSettings, predictor, subnets: list[SubnetConfig], anchor: SubnetConfig,
                   stage: _Stages) -> Measured:  # fmt: skip
    """Measure the full network and the winner as the profile was measured, in turns (`visits`); beside the
    profile's anchor when the predictor learned drift-corrected figures, so they compare like for like."""
    from .concepts import metric
    from .profiler import Protocol, Shapes
    from .profiler.backends import get_backend
    from .profiler.store import kept_figure

    meta = predictor.metadata_
    stage(6, f"measure: full network and winner with the {meta['backend']} {meta['precision']} backend (the profile's protocol)")
    backend = get_backend(meta["backend"])(
        settings.model, meta["precision"], meta["device"], meta["threads"], "auto", settings.seed, meta["clock"]
    )
    shapes = Shapes(**meta["shapes"])
    backend.warm_up(subnets[0], shapes)
    corrected = meta.get("drift_corrected_by")
    measured = subnets + [anchor] if corrected else subnets
    figures = [m.to_dict() for m in backend.measure_visits(measured, shapes, Protocol(visits=settings.visits))]
    if not corrected:
        return Measured(figures, None)
    anchor_now = kept_figure(figures[-1][metric(meta["metric"]).field], meta.get("statistic") or "median")
    return Measured(figures[: len(subnets)], corrected["scale"] / anchor_now)


def _heldout_perplexities(settings: RunSettings, supernet, subnets: list[SubnetConfig]) -> list[float]:
    """Perplexity on the same held-out tokens the export verified the artifact on."""
    from .evaluate import load_heldout, perplexity

    tokens = load_heldout(settings.model, HELDOUT_TOKENS)
    return [perplexity(supernet, cfg, tokens).value for cfg in subnets]


# ---- summary ---------------------------------------------------------------------------------
def _summary(settings, out, space, supernet, profile, predictor, budget, search, chosen, manifest, measured,
             perplexities, predictor_path, deployed) -> dict:  # fmt: skip
    from .analytics import subnet_stats
    from .profiler.load import was_loaded
    from .profiler.store import kept_figure

    shape = supernet.shape
    full_cfg = space.largest
    predicted = predictor.predict([full_cfg, chosen])
    shapes = predictor.metadata_["shapes"]
    statistic = predictor.metadata_.get("statistic") or "median"  # predictors older than the fast end learned medians
    rows = []
    for cfg, pred, meas, ppl in zip([full_cfg, chosen], predicted, measured.figures, perplexities):
        stats = subnet_stats(shape, cfg, shapes["prompt_len"], shapes["context_len"])
        decode = kept_figure(meas["decode_ms"], statistic)
        like_for_like = decode * (measured.speed_factor or 1.0)
        rows.append(
            {
                "name": "full super-network" if cfg.id == full_cfg.id else f"sub-network {cfg.id}",
                "subnet": cfg.to_dict(),
                "subnet_id": cfg.id,
                "params": stats.params,
                "fp16_gib": stats.fp16_gib,
                "predicted_decode_ms": float(pred),
                "measured_decode_ms": decode,
                "measured_decode_ms_at_profile_speed": like_for_like,
                "prediction_error_pct": 100.0 * (float(pred) - like_for_like) / like_for_like,
                "measured_prefill_ms": kept_figure(meas["prefill_ms"], statistic),
                "throughput_tok_s": kept_figure(meas["throughput_tok_s"], statistic),
                "heldout_perplexity": ppl,
                "measured_under_load": was_loaded(meas),
                f"search_{search.accuracy_name}": _search_value(search, cfg),
            }
        )
    full, sub = rows
    return {
        "schema_version": 1,
        "run_dir": str(out),
        "request": {"out": str(out), **asdict(settings)},
        "profile": profile,
        "deployed": deployed,
        "predictor": {"file": str(predictor_path), **_predictor_info(predictor)},
        "latency_budget_ms": budget,
        "speed_factor": measured.speed_factor,
        "search": {"dir": str(search.out_dir), "evaluations": search.evaluations, "front_size": len(search.front)},
        "search_accuracy_metric": search.accuracy_name,
        "heldout_tokens": HELDOUT_TOKENS,
        "rows": rows,
        "ratios": {
            "smaller_params": full["params"] / sub["params"],
            "faster_measured": full["measured_decode_ms"] / sub["measured_decode_ms"],
            "faster_predicted": full["predicted_decode_ms"] / sub["predicted_decode_ms"],
            "throughput": sub["throughput_tok_s"] / full["throughput_tok_s"],
            "heldout_perplexity_delta": sub["heldout_perplexity"] - full["heldout_perplexity"],
        },
        "artifact": _artifact_info(out / "artifact", manifest),
        "files": sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()),
    }


def _search_value(search: SearchOutcome, cfg: SubnetConfig) -> float:
    if cfg.id == search.full["subnet_id"]:
        return search.full["values"][search.accuracy_name]
    return next(e["objectives"][search.accuracy_name] for e in search.front if e["subnet_id"] == cfg.id)


def _predictor_info(predictor) -> dict[str, Any]:
    meta = predictor.metadata_
    keys = ("target", "backend", "precision", "metric", "statistic", "shapes", "test_metrics", "n_train", "n_test")
    info = {k: meta.get(k) for k in keys}
    mape = (meta.get("test_metrics") or {}).get("mape_pct")
    info["reliable"] = None if mape is None else mape <= UNRELIABLE_MAPE_PCT
    transfer = meta.get("transfer")
    info["transfer"] = None if not transfer else {
        "kind": transfer.get("kind"), "target_samples": transfer["target_samples"],
        **{k: transfer["source"].get(k) for k in ("name", "sha256", "target", "backend", "precision")},
    }  # fmt: skip
    return info


def _artifact_info(path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    measured = manifest.get("measured") or {}
    size = sum(p.stat().st_size for p in path.iterdir() if p.name.startswith("model.onnx"))
    return {
        "dir": str(path),
        "precision": manifest.get("precision"),
        "onnx_mib": size / 2**20,
        "measured": {k: measured.get(k) for k in ("backend", "decode_ms", "prefill_ms", "throughput_tok_s")},
        "verification": manifest.get("verification"),
        "predicted": manifest.get("predicted"),
    }


# ---- helpers -----------------------------------------------------------------------------------
def _check_run_dir(settings: RunSettings, out: Path) -> None:
    """A run directory belongs to one set of settings: the same ones resume, others are refused; a
    directory that holds no run.json must not exist or be empty (`jsonfiles.check_out_dir`)."""
    path = out / RUN_FILE
    wanted = asdict(settings)
    if path.is_file():
        stored = read_json(path, "run settings file")
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
