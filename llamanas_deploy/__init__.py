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
from typing import Any

__version__ = "0.1.0"

_API = {
    # spaces, sub-networks, the super-network
    "SearchSpace": "space", "load_space": "space", "SubnetConfig": "subnet_config",
    "SuperNetwork": "model.supernet",
    # job 1: profile a hardware target
    "profile_target": ("profile", "profile"), "ProfileSettings": "profile", "ProfileResult": "profile",
    "Shapes": "profile", "Protocol": "profile", "list_targets": "profile", "profile_fleet": "profile",
    # latency predictors
    "fit_predictor": ("predict", "fit"), "FitSettings": "predict", "FitResult": "predict",
    "LatencyPredictor": "predict", "list_latency_predictors": "predict", "load_latency_predictor": "predict",
    "predict_subnets": "predict",
    # job 2: search
    "minimize": "search", "SearchProblem": "search", "SearchResult": "search",
    "NSGA2": "search", "LINAS": "search", "RandomSearch": "search",
    "Perplexity": "search", "TaskAccuracy": "search", "PredictedLatency": "search", "ModelSize": "search",
    # job 3: export, measure, run
    "export_artifact": ("export", "export"), "ExportSettings": "export", "ExportResult": "export",
    "BenchSettings": "export", "bench_artifact": ("export", "bench"),
    "open_artifact": "runtime", "generate_text": "runtime", "Sampling": "runtime",
    # fine-tuning and accuracy
    "finetune_supernet": ("finetune", "finetune"), "FinetuneSettings": "finetune", "FinetuneResult": "finetune",
    "evaluate_subnet": "evaluate", "EvalSettings": "evaluate", "EvalResult": "evaluate",
    "perplexity": "evaluate", "multiple_choice": "evaluate", "load_heldout": "evaluate", "load_task": "evaluate",
    # the whole loop
    "run_loop": ("loop", "run"), "RunSettings": "loop", "RunResult": "loop",
    # Ray: accuracy on workers, profiles on the nodes of a fleet
    "RayWorkers": "cluster", "RayNode": "cluster",
    # progress and errors
    "Progress": "progress", "LlamanasError": "errors", "BadInputError": "errors", "VerificationError": "errors",
}  # fmt: skip

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'llamanas_deploy' has no attribute {name!r}")
    module, attribute = _API[name] if isinstance(_API[name], tuple) else (_API[name], name)
    value = getattr(importlib.import_module(f".{module}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
