"""llamanas-deploy: hardware-aware LLaMA-NAS, from device profile to ONNX Runtime artifact.

The public API, one function per stage (typed settings in, a typed result out, an optional
progress `callback`), each taking a loaded `SuperNetwork` so that a script loads it once::

    import llamanas_deploy as ln

    space, supernet = ln.load_space("tiny"), ln.SuperNetwork.load("tiny")
    profiled = ln.profile_target(supernet, space, ln.ProfileSettings(samples=12), target="laptop")
    predictor = ln.fit_predictor(profiled.dir, "decode_ms").predictor
    problem = ln.SearchProblem(supernet, space, [ln.Perplexity(), ln.PredictedLatency(predictor)])
    result = ln.minimize(problem, ln.NSGA2(population=10), evaluations=20, out="runs/search")
    artifact = ln.export_artifact(supernet, space, result.front[0]["subnet"], "runs/artifact")

Names are imported on first use, so `import llamanas_deploy` (and `llamanas --help`) stays instant.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

__version__ = "0.1.0"

_API = {
    # spaces, sub-networks, the super-network
    "SearchSpace": "space", "load_space": "space", "SubnetConfig": "subnet_config",
    "SuperNetwork": "model.supernet",
    # job 1: profile a hardware target
    "profile": "profiler", "ProfileSettings": "profiler", "ProfileResult": "profiler",
    "Shapes": "profiler", "Protocol": "profiler", "list_targets": "profiler", "profile_fleet": "profiler",
    # latency predictors
    "fit": "predict", "FitSettings": "predict", "FitResult": "predict",
    "LatencyPredictor": "predict", "list_latency_predictors": "predict", "load_latency_predictor": "predict",
    "predict_subnets": "predict",
    # job 2: search
    "minimize": "search", "SearchProblem": "search", "SearchResult": "search",
    "NSGA2": "search", "LINAS": "search", "RandomSearch": "search",
    "Perplexity": "search", "TaskAccuracy": "search", "PredictedLatency": "search", "ModelSize": "search",
    # job 3: export, measure, run
    "export": "exporter", "ExportSettings": "exporter", "ExportResult": "exporter",
    "bench": "exporter", "BenchSettings": "exporter",
    "open_artifact": "runtime", "generate_text": "runtime", "Sampling": "runtime",
    # fine-tuning and accuracy
    "finetune": "finetuning", "FinetuneSettings": "finetuning", "FinetuneResult": "finetuning",
    "evaluate_subnet": "evaluate", "EvalSettings": "evaluate", "EvalResult": "evaluate",
    "perplexity": "evaluate", "multiple_choice": "evaluate", "load_heldout": "evaluate", "load_task": "evaluate",
    # the whole loop
    "run": "loop", "RunSettings": "loop", "RunResult": "loop",
    # Ray: accuracy on workers, profiles on the nodes of a fleet
    "RayWorkers": "cluster", "RayNode": "cluster",
    # progress and errors
    "Progress": "progress", "LlamanasError": "errors", "BadInputError": "errors", "VerificationError": "errors",
}  # fmt: skip

# the names of release 0.1, kept one release: each stage is now called what its command is called
_DEPRECATED = {
    "profile_target": "profile", "fit_predictor": "fit", "export_artifact": "export", "bench_artifact": "bench",
    "finetune_supernet": "finetune", "run_loop": "run",
}  # fmt: skip

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        warnings.warn(f"llamanas_deploy.{name} is deprecated; use llamanas_deploy.{_DEPRECATED[name]}",
                      DeprecationWarning, stacklevel=2)  # fmt: skip
        return __getattr__(_DEPRECATED[name])
    if name not in _API:
        raise AttributeError(f"module 'llamanas_deploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
