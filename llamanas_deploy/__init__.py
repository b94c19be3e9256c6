"""llamanas-deploy: hardware-aware LLaMA-NAS, from device profile to ONNX Runtime artifact.

The public API, one function per stage, each called what its command is called (`profile`,
`fit`, `minimize` for `search`, `export`, `bench`, `finetune`, `run`): the super-network and
space first where the stage uses them (a loaded object, or its name), then typed settings,
then keyword-only `out` and `callback` (progress); a typed result out. With a shipped
predictor and a loaded super-network::

    import llamanas_deploy as ln

    space, supernet = ln.load_space("tiny"), ln.SuperNetwork.load("tiny")
    predictor = ln.load_latency_predictor("amd-epyc-2c-torch-fp32-decode_ms")
    problem = ln.SearchProblem(supernet, space, [ln.Perplexity(max_tokens=256), ln.PredictedLatency(predictor)])
    result = ln.minimize(problem, ln.RandomSearch(), evaluations=8, out="runs/search")
    artifact = ln.export(supernet, space, result.front[0], out="runs/artifact", bench=None)
    measured = ln.bench(artifact, ln.BenchSettings(protocol=ln.Protocol(visits=1)))
    print(measured.subnet_id, measured.measured["decode_ms"]["median"], "ms per token")

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
    "minimize": "search", "SearchProblem": "search", "SearchResult": "search", "FrontMember": "search",
    "NSGA2": "search", "LINAS": "search", "RandomSearch": "search",
    "Perplexity": "search", "TaskAccuracy": "search", "PredictedLatency": "search", "ModelSize": "search",
    # job 3: export, measure, run
    "export": "exporter", "ExportSettings": "exporter", "Artifact": "runtime",
    "bench": "exporter", "BenchSettings": "exporter", "BenchResult": "exporter",
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
    "finetune_supernet": "finetune", "run_loop": "run", "ExportResult": "Artifact",
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
