"""`llamanas run`'s summary (`summary.json`, what `--json` prints): the full network and the winner
side by side, predicted and measured, with the ratios between them and where every figure came from.

The loop (`loop.run`) gathers what each stage left (`SearchOutcome`, `Measured`, ...); `summarize`
only reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .analytics import subnet_stats
from .onnx_model.artifact import GGUF_KIND
from .profiler.load import was_loaded
from .profiler.store import kept_figure
from .subnet_config import SubnetConfig

if TYPE_CHECKING:
    from .search import FrontMember

UNRELIABLE_MAPE_PCT = 25.0  # a predictor's held-out error beyond this: its latencies are noise, and the summary says so


@dataclass
class SearchOutcome:
    """What the loop's search stage found."""

    front: list[FrontMember]
    full: dict[str, Any]  # the full network's subnet_id and values
    accuracy_name: str
    accuracy_direction: str
    directory: Path
    evaluations: int


@dataclass(frozen=True)
class Measured:
    figures: list[dict[str, Any]]  # one record's figures per sub-network
    speed_factor: float | None  # the predictor's anchor scale / the anchor now: figures x this = at the profile's speed


def summarize(out: Path, request: dict[str, Any], *, space, supernet, profile: dict[str, Any],
              deployed: dict[str, Any] | None, predictor, predictor_path: Path, budget_ms: float,
              search: SearchOutcome, chosen: SubnetConfig, manifest: dict[str, Any], measured: Measured,
              heldout_tokens: int, perplexities: list[float]) -> dict[str, Any]:  # fmt: skip
    """The run's summary: `request` is the run's settings; `measured` and `perplexities` (on `heldout_tokens`
    held-out tokens) are of the full network and `chosen`, in that order."""
    rows = _rows(space, supernet, predictor, search, [space.largest, chosen], measured, perplexities)
    full, sub = rows
    return {
        "schema_version": 1,
        "run_dir": str(out),
        "request": {"out": str(out), **request},
        "profile": profile,
        "deployed": deployed,
        "predictor": {"file": str(predictor_path), **_predictor_info(predictor)},
        "latency_budget_ms": budget_ms,
        "speed_factor": measured.speed_factor,
        "search": {"dir": str(search.directory), "evaluations": search.evaluations, "front_size": len(search.front)},
        "search_accuracy_metric": search.accuracy_name,
        "heldout_tokens": heldout_tokens,
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


def _rows(space, supernet, predictor, search: SearchOutcome, subnets: list[SubnetConfig], measured: Measured,
          perplexities: list[float]) -> list[dict[str, Any]]:  # fmt: skip
    """One row per sub-network (the full network first): size, predicted and measured figures, perplexity."""
    full_cfg = space.largest
    predicted = predictor.predict(subnets)
    shapes = predictor.metadata_["shapes"]
    statistic = predictor.metadata_.get("statistic") or "median"  # predictors older than the fast end learned medians
    rows = []
    for cfg, pred, meas, ppl in zip(subnets, predicted, measured.figures, perplexities):
        stats = subnet_stats(supernet.shape, cfg, shapes["prompt_len"], shapes["context_len"])
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
    return rows


def _search_value(search: SearchOutcome, cfg: SubnetConfig) -> float:
    if cfg.id == search.full["subnet_id"]:
        return search.full["values"][search.accuracy_name]
    return next(m.objectives[search.accuracy_name] for m in search.front if m.subnet_id == cfg.id)


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
    gguf = manifest.get("kind") == GGUF_KIND
    size = sum(p.stat().st_size for p in path.iterdir() if p.name.startswith("model.gguf" if gguf else "model.onnx"))
    return {
        "dir": str(path),
        "format": "gguf" if gguf else "onnx",
        "precision": manifest.get("precision"),
        "file_mib": size / 2**20,
        "measured": {k: measured.get(k) for k in ("backend", "decode_ms", "prefill_ms", "throughput_tok_s")},
        "verification": manifest.get("verification"),
        "predicted": manifest.get("predicted"),
    }
