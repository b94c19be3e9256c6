"""`llamanas run`: the whole loop on one device, each stage's output a file in one run directory.

    profile (reuse a shipped profile of this device, or measure) -> fit the latency predictor
    -> search under a latency budget -> export the best sub-network within the budget
    -> verify and measure the artifact -> measure the full network and the winner the way the
    profile was measured -> one summary table.

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
from .progress import Callback, report
from .subnet_config import SubnetConfig

PROFILE_DIRS = (Path("hardware_profiles"), Path(__file__).resolve().parent.parent / "hardware_profiles")
LATENCY_METRIC = "decode_ms"
STAGES = 6
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
        check_choice(self.device, DEVICES, "device")
        check_choice(self.clock, CLOCKS, "clock")
        if self.max_latency_ms is not None and not (math.isfinite(self.max_latency_ms) and self.max_latency_ms > 0):
            raise BadInputError(f"must be a positive finite number of ms, got {self.max_latency_ms}", param="max_latency_ms")
        if not (math.isfinite(self.speedup) and self.speedup >= 1):
            raise BadInputError(f"must be a finite number >= 1, got {self.speedup}", param="speedup")


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
    profile_dir, reused = _stage_profile(settings, out, space, stage)
    supernet = SuperNetwork.load(settings.model)
    supernet.check_space(space)
    predictor_path = _stage_fit(settings, out, space, supernet, profile_dir, stage)
    predictor = _load_predictor(predictor_path, space)
    budget = settings.max_latency_ms or float(predictor.predict([space.largest])[0]) / settings.speedup
    search = _stage_search(settings, out, space, supernet, predictor_path, budget, stage)
    chosen = choose(search.front, search.accuracy_name, search.accuracy_direction, predictor.metadata_["metric"], budget)
    manifest = _stage_export(settings, out, space, supernet, chosen, predictor_path, stage)
    measured = _stage_measure(settings, predictor, [space.largest, chosen], stage)
    perplexities = _heldout_perplexities(settings, supernet, [space.largest, chosen])
    stage(6, "summary")
    profile = {"dir": str(profile_dir), "reused": reused}
    summary = _summary(settings, out, space, supernet, profile, predictor, budget, search, chosen, manifest, measured,
                       perplexities)  # fmt: skip
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
def _stage_profile(settings: RunSettings, out: Path, space, stage: _Stages) -> tuple[Path, bool]:
    """A profile of this device for the backend: a shipped/earlier one if it matches, else measured now."""
    shipped = find_matching_profile(settings, space)
    if shipped is not None:
        stage(1, f"profile: reusing {shipped} (same device fingerprint, backend, shapes)")
        return shipped, True
    from .profile import ProfileSettings, Protocol, profile

    profile_dir = out / "profile"
    stage(1, f"profile: no matching profile of this device; measuring {settings.samples} sub-networks into {profile_dir}")
    profile_settings = ProfileSettings(
        backend=settings.backend,
        precision=settings.backend_precision,
        device=settings.device,
        samples=settings.samples,
        seed=settings.seed,
        threads=settings.threads,
        clock=settings.clock,
        protocol=Protocol(visits=settings.visits),
    )
    profile(settings.model, space, profile_settings, target=f"run-{out.name}", out=profile_dir, callback=stage.callback)
    return profile_dir, False


def find_matching_profile(settings: RunSettings, space) -> Path | None:
    """The first profile directory measured on this device with enough usable records for the run."""
    from .predict.dataset import load_profile_data
    from .profile.fingerprint import current_fingerprint

    here = current_fingerprint()["fingerprint_id"]
    for root in PROFILE_DIRS:
        for candidate in sorted(root.glob("*/fingerprint.json")) if root.is_dir() else []:
            try:
                data = load_profile_data(
                    candidate.parent, LATENCY_METRIC, space, settings.backend, settings.backend_precision
                )
            except BadInputError:
                continue
            setting = data.setting
            if (
                data.fingerprint["fingerprint_id"] == here
                and setting["device"] == settings.device
                and setting["threads"] == settings.threads
                and len(data.y) >= settings.min_profile_subnets
            ):
                return candidate.parent
    return None


def _stage_fit(settings: RunSettings, out: Path, space, supernet, profile_dir: Path, stage: _Stages) -> Path:
    path = out / f"predictor-{LATENCY_METRIC}.json"
    if path.is_file():
        stage(2, f"fit: reusing {path}")
        return path
    from .predict import FitSettings, fit

    stage(2, f"fit: XGBoost {LATENCY_METRIC} predictor on {profile_dir}")
    result = fit(profile_dir, LATENCY_METRIC, FitSettings(seed=settings.seed, learning_curve=False), space=space,
                 model=supernet, backend=settings.backend, precision=settings.backend_precision,
                 callback=stage.callback)  # fmt: skip
    metrics = result.predictor.metadata_["test_metrics"]
    stage.log(f"      held-out: MAPE {metrics['mape_pct']:.2f}%, {metrics['within_10_pct']:.0f}% within ±10%")
    return result.predictor.save(path)


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

    stage(3, f"search: {settings.algorithm}, {settings.evaluations} evaluations, latency budget {budget_ms:.2f} ms")
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
    from .export import BenchSettings, ExportSettings, export
    from .profile import Protocol

    artifact = out / "artifact"
    manifest_path = artifact / "manifest.json"
    if manifest_path.is_file():
        from .onnx_model.artifact import read_manifest

        manifest = read_manifest(artifact)  # the one check every artifact reader makes
        if manifest.get("subnet_id") == chosen.id and manifest.get("precision") == settings.export_precision:
            stage(4, f"export: reusing {artifact}")
            return manifest
        raise BadInputError(f"{artifact}: holds another artifact; use a new run directory")
    stage(4, f"export: {chosen.id} ({chosen.num_layers} layers) to ONNX {settings.export_precision}, verify, bench")
    export_settings = ExportSettings(precision=settings.export_precision, device=settings.device,
                                     max_eval_tokens=HELDOUT_TOKENS)  # fmt: skip
    bench = BenchSettings(protocol=Protocol(visits=settings.visits), threads=settings.threads, clock=settings.clock)
    result = export(supernet, space, chosen, artifact, export_settings, predictor=predictor_path, bench=bench,
                    callback=stage.callback)  # fmt: skip
    return result.manifest


def _stage_measure(settings: RunSettings, predictor, subnets: list[SubnetConfig], stage: _Stages) -> list[dict[str, Any]]:
    """Measure the full network and the winner as the profile was measured, in turns (`visits`)."""
    from .profile import Protocol, Shapes
    from .profile.backends import get_backend

    meta = predictor.metadata_
    stage(5, f"measure: full network and winner with the {meta['backend']} backend (the profile's protocol)")
    backend = get_backend(meta["backend"])(
        settings.model, meta["precision"], meta["device"], meta["threads"], "auto", settings.seed, meta["clock"]
    )
    shapes = Shapes(**meta["shapes"])
    backend.warm_up(subnets[0], shapes)
    return [m.to_dict() for m in backend.measure_visits(subnets, shapes, Protocol(visits=settings.visits))]


def _heldout_perplexities(settings: RunSettings, supernet, subnets: list[SubnetConfig]) -> list[float]:
    """Perplexity on the same held-out tokens the export verified the artifact on."""
    from .evaluate import load_heldout, perplexity

    tokens = load_heldout(settings.model, HELDOUT_TOKENS)
    return [perplexity(supernet, cfg, tokens).value for cfg in subnets]


# ---- summary ---------------------------------------------------------------------------------
def _summary(settings, out, space, supernet, profile, predictor, budget, search, chosen, manifest, measured,
             perplexities) -> dict:  # fmt: skip
    from .analytics import subnet_stats
    from .profile.store import kept_figure

    shape = supernet.shape
    full_cfg = space.largest
    predicted = predictor.predict([full_cfg, chosen])
    shapes = predictor.metadata_["shapes"]
    statistic = predictor.metadata_.get("statistic") or "median"  # predictors older than the fast end learned medians
    rows = []
    for cfg, pred, meas, ppl in zip([full_cfg, chosen], predicted, measured, perplexities):
        stats = subnet_stats(shape, cfg, shapes["prompt_len"], shapes["context_len"])
        decode = kept_figure(meas["decode_ms"], statistic)
        rows.append(
            {
                "name": "full super-network" if cfg.id == full_cfg.id else f"sub-network {cfg.id}",
                "subnet": cfg.to_dict(),
                "subnet_id": cfg.id,
                "params": stats.params,
                "fp16_gib": stats.fp16_gib,
                "predicted_decode_ms": float(pred),
                "measured_decode_ms": decode,
                "prediction_error_pct": 100.0 * (float(pred) - decode) / decode,
                "measured_prefill_ms": kept_figure(meas["prefill_ms"], statistic),
                "throughput_tok_s": kept_figure(meas["throughput_tok_s"], statistic),
                "heldout_perplexity": ppl,
                f"search_{search.accuracy_name}": _search_value(search, cfg),
            }
        )
    full, sub = rows
    return {
        "schema_version": 1,
        "run_dir": str(out),
        "request": {"out": str(out), **asdict(settings)},
        "profile": profile,
        "predictor": {"file": str(out / f"predictor-{LATENCY_METRIC}.json"), **_predictor_info(predictor)},
        "latency_budget_ms": budget,
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
    keys = ("target", "backend", "precision", "metric", "statistic", "shapes", "test_metrics")
    return {k: meta.get(k) for k in keys}


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
