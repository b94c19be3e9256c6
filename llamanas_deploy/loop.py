"""`llamanas run`: the whole loop on one device, each stage's output a file in one run directory.

    profile (reuse a shipped profile of this device, or measure) -> fit the latency predictor
    -> search under a latency budget -> export the best sub-network within the budget
    -> verify and measure the artifact -> measure the full network and the winner the way the
    profile was measured -> one summary table.

Each stage reads the previous stage's files, so a rerun of the same command with the same
`--out` skips the stages whose output is already there and resumes the interrupted one.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import BadInputError
from .subnet_config import SubnetConfig

PROFILE_DIRS = (Path("hardware_profiles"), Path(__file__).resolve().parent.parent / "hardware_profiles")
LATENCY_METRIC = "decode_ms"
STAGES = 6
HELDOUT_TOKENS = 4096  # the export's verification data: full, winner and artifact share one perplexity


@dataclass(frozen=True)
class RunRequest:
    out: Path
    model: str = "tiny"
    space: str = "tiny"
    backend: str = "torch"
    backend_precision: str = "fp32"
    export_precision: str = "int8"
    device: str = "cpu"
    max_latency_ms: float | None = None
    speedup: float = 1.5
    samples: int = 60
    visits: int = 3
    min_profile_subnets: int = 40
    algorithm: str = "nsga2"
    population: int = 20
    evaluations: int = 60
    eval_tokens: int = 2048
    seed: int = 0
    threads: int = 1
    clock: str = "cpu"
    progress: bool = True


def run_loop(request: RunRequest) -> dict[str, Any]:
    """Run every stage; returns the summary also written to `OUT/summary.json`."""
    from .space import load_space

    space = load_space(request.space)
    request.out.mkdir(parents=True, exist_ok=True)
    _check_run_dir(request)
    profile_dir, reused = _stage_profile(request, space)
    predictor_path = _stage_fit(request, space, profile_dir)
    predictor = _load_predictor(predictor_path, space)
    budget = request.max_latency_ms or float(predictor.predict([space.largest])[0]) / request.speedup
    search = _stage_search(request, space, predictor_path, budget)
    chosen = choose(search.front, search.accuracy_name, search.accuracy_direction, predictor.metadata_["metric"], budget)
    manifest = _stage_export(request, chosen, predictor_path)
    measured = _stage_measure(request, predictor, [space.largest, chosen])
    perplexities = _heldout_perplexities(request, [space.largest, chosen])
    profile = {"dir": str(profile_dir), "reused": reused}
    summary = _summary(request, space, profile, predictor, budget, search, chosen, manifest, measured, perplexities)
    _write_json(request.out / "summary.json", summary)
    return summary


# ---- stages ------------------------------------------------------------------------------
def _stage_profile(request: RunRequest, space) -> tuple[Path, bool]:
    """A profile of this device for the backend: a shipped/earlier one if it matches, else measured now."""
    shipped = find_matching_profile(request, space)
    if shipped is not None:
        _step(1, f"profile: reusing {shipped} (same device fingerprint, backend, shapes)")
        return shipped, True
    from .profile.runner import ProfileRequest, run_profile
    from .profile.stats import Protocol

    out = request.out / "profile"
    _step(1, f"profile: no matching profile of this device; measuring {request.samples} sub-networks into {out}")
    run_profile(
        ProfileRequest(
            target=f"run-{request.out.name}",
            model=request.model,
            space=request.space,
            backend=request.backend,
            precision=request.backend_precision,
            device=request.device,
            samples=request.samples,
            seed=request.seed,
            threads=request.threads,
            clock=request.clock,
            protocol=Protocol(visits=request.visits),
            out=out,
        ),
        progress=request.progress,
    )
    return out, False


def find_matching_profile(request: RunRequest, space) -> Path | None:
    """The first profile directory measured on this device with enough usable records for the request."""
    from .predict.dataset import load_profile_data
    from .profile.fingerprint import current_fingerprint

    here = current_fingerprint()["fingerprint_id"]
    for root in PROFILE_DIRS:
        for candidate in sorted(root.glob("*/fingerprint.json")) if root.is_dir() else []:
            try:
                data = load_profile_data(
                    candidate.parent, LATENCY_METRIC, space, request.backend, request.backend_precision
                )
            except BadInputError:
                continue
            setting = data.setting
            if (
                data.fingerprint["fingerprint_id"] == here
                and setting["device"] == request.device
                and setting["threads"] == request.threads
                and len(data.y) >= request.min_profile_subnets
            ):
                return candidate.parent
    return None


def _stage_fit(request: RunRequest, space, profile_dir: Path) -> Path:
    path = request.out / f"predictor-{LATENCY_METRIC}.json"
    if path.is_file():
        _step(2, f"fit: reusing {path}")
        return path
    from .predict.dataset import load_profile_data, resolve_shape
    from .predict.train import fit_profile

    _step(2, f"fit: XGBoost {LATENCY_METRIC} predictor on {profile_dir}")
    data = load_profile_data(profile_dir, LATENCY_METRIC, space, request.backend, request.backend_precision)
    result = fit_profile(data, resolve_shape(data, request.model), LATENCY_METRIC, seed=request.seed, with_curve=False,
                         show_progress=request.progress)  # fmt: skip
    metrics = result.predictor.metadata_["test_metrics"]
    log(f"      held-out: MAPE {metrics['mape_pct']:.2f}%, {metrics['within_10_pct']:.0f}% within ±10%")
    return result.predictor.save(path)


@dataclass
class SearchOutcome:
    front: list[dict[str, Any]]
    full: dict[str, Any]
    accuracy_name: str
    accuracy_direction: str
    out_dir: Path
    evaluations: int


def _stage_search(request: RunRequest, space, predictor_path: Path, budget_ms: float) -> SearchOutcome:
    from .search.objectives import build_objective_set
    from .search.run import SearchSettings, run_search

    _step(3, f"search: {request.algorithm}, {request.evaluations} evaluations, latency budget {budget_ms:.2f} ms")
    objectives = build_objective_set(request.model, space, [f"latency:{predictor_path}"], eval_tokens=request.eval_tokens)
    settings = SearchSettings(
        algorithm=request.algorithm,
        population=request.population,
        evaluations=request.evaluations,
        seed=request.seed,
        max_latency_ms=budget_ms,
    )
    result = run_search(space, objectives, request.out / "search", settings, show_progress=request.progress)
    accuracy = objectives.accuracy
    return SearchOutcome(result.front, result.full, accuracy.name, accuracy.direction, result.out_dir, result.evaluations)


def choose(front: list[dict[str, Any]], accuracy: str, direction: str, latency: str, budget_ms: float) -> SubnetConfig:
    """The most accurate front member whose predicted latency is within the budget."""
    feasible = [e for e in front if e["objectives"][latency] <= budget_ms]
    if not feasible:
        raise BadInputError(f"no sub-network found within the latency budget of {budget_ms:.3f} ms; raise --max-latency")
    sign = -1.0 if direction == "max" else 1.0
    best = min(feasible, key=lambda e: (sign * e["objectives"][accuracy], e["objectives"][latency]))
    return SubnetConfig.from_dict(best["subnet"], "front")


def _stage_export(request: RunRequest, chosen: SubnetConfig, predictor_path: Path) -> dict[str, Any]:
    from .export.pipeline import ExportRequest, export_artifact
    from .profile.stats import Protocol

    out = request.out / "artifact"
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("subnet_id") == chosen.id and manifest.get("precision") == request.export_precision:
            _step(4, f"export: reusing {out}")
            return manifest
        raise BadInputError(f"{out}: holds another artifact; use a new --out")
    _step(4, f"export: {chosen.id} ({chosen.num_layers} layers) to ONNX {request.export_precision}, verify, bench")
    return export_artifact(
        ExportRequest(
            model=request.model,
            space=request.space,
            subnet=chosen,
            precision=request.export_precision,
            device=request.device,
            out=out,
            predictor=predictor_path,
            max_eval_tokens=HELDOUT_TOKENS,
            progress=request.progress,
            bench_options={"threads": request.threads, "clock": request.clock, "protocol": Protocol(visits=request.visits)},
        )
    )


def _stage_measure(request: RunRequest, predictor, subnets: list[SubnetConfig]) -> list[dict[str, Any]]:
    """Measure the full network and the winner as the profile was measured, in turns (`--visits`)."""
    from .profile.backends import get_backend
    from .profile.base import Shapes
    from .profile.stats import Protocol

    meta = predictor.metadata_
    _step(5, f"measure: full network and winner with the {meta['backend']} backend (the profile's protocol)")
    backend = get_backend(meta["backend"])(
        request.model, meta["precision"], meta["device"], meta["threads"], "auto", request.seed, meta["clock"]
    )
    shapes = Shapes(**meta["shapes"])
    backend.warm_up(subnets[0], shapes)
    return [m.to_dict() for m in backend.measure_visits(subnets, shapes, Protocol(visits=request.visits))]


def _heldout_perplexities(request: RunRequest, subnets: list[SubnetConfig]) -> list[float]:
    """Perplexity on the same held-out tokens the export verified the artifact on."""
    from .evaluate import load_heldout, perplexity
    from .model.supernet import SuperNetwork

    supernet = SuperNetwork.load(request.model)
    tokens = load_heldout(request.model, HELDOUT_TOKENS)
    return [perplexity(supernet, cfg, tokens).value for cfg in subnets]


# ---- summary ---------------------------------------------------------------------------------
def _summary(request, space, profile, predictor, budget, search, chosen, manifest, measured, perplexities) -> dict:
    from .analytics import subnet_stats
    from .model.families import read_shape
    from .profile.store import kept_figure

    _step(6, "summary")
    shape = read_shape(request.model)
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
        "run_dir": str(request.out),
        "request": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(request).items()},
        "profile": profile,
        "predictor": {"file": str(request.out / f"predictor-{LATENCY_METRIC}.json"), **_predictor_info(predictor)},
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
        "artifact": _artifact_info(request.out / "artifact", manifest),
        "files": sorted(str(p.relative_to(request.out)) for p in request.out.rglob("*") if p.is_file()),
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
def _check_run_dir(request: RunRequest) -> None:
    """A run directory belongs to one request: the same command resumes, another is refused."""
    path = request.out / "run.json"
    wanted = {k: v for k, v in asdict(request).items() if k not in ("out", "progress")}
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored != wanted:
            changed = sorted(k for k in wanted if stored.get(k) != wanted[k])
            raise BadInputError(f"{request.out}: holds a run with other settings ({', '.join(changed)}); use a new --out")
        return
    _write_json(path, wanted)


def _load_predictor(path: Path, space):
    from .predict.estimator import LatencyPredictor

    predictor = LatencyPredictor.load(path)
    predictor.check_space(space)
    return predictor


def _step(number: int, text: str) -> None:
    log(f"[{number}/{STAGES}] {text}")


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)
