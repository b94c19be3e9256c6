"""`llamanas fit` (a predictor from a hardware profile) and `llamanas predict` (query one)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import BadInputError
from ..predict.estimator import METRICS
from .common import emit, json_option, log, table


@click.command()
@click.option("--profile", "profile_dir", required=True, help="Hardware profile directory (hardware_profiles/<target>).")
@click.option("--metric", type=click.Choice(sorted(METRICS)), default="decode_ms", show_default=True)
@click.option("--backend", default=None, help="Backend to fit on, when the profile holds several.")
@click.option("--precision", default=None, help="Precision to fit on, when the profile holds several.")
@click.option("--space", "space_name", default=None, help="Space name or JSON file [default: the profile's built-in space].")
@click.option("--model", "model_path", default=None, help="Super-network dir or config.json [default: the built-in model the profile names].")
@click.option("--out", "out_path", required=True, help="Predictor file to write, e.g. predictors/<name>.json.")
@click.option("--plot", "plot_path", default=None, help="PNG: predicted vs measured on the held-out split.")
@click.option("--test-fraction", default=0.2, show_default=True, type=click.FloatRange(0.05, 0.5))
@click.option("--seed", default=0, show_default=True, help="Seed of the train/test split and of XGBoost.")
@json_option
def fit(
    profile_dir: str,
    metric: str,
    backend: str | None,
    precision: str | None,
    space_name: str | None,
    model_path: str | None,
    out_path: str,
    plot_path: str | None,
    test_fraction: float,
    seed: int,
    as_json: bool,
) -> None:
    """Fit an XGBoost predictor of METRIC on a profile; compare it with baselines on a held-out split."""
    from ..predict.compare import plot_predictions
    from ..predict.dataset import load_profile_data, resolve_shape
    from ..predict.train import fit_profile
    from ..space import load_space

    _check_out(out_path, ".json", "--out")
    if plot_path:
        _check_out(plot_path, ".png", "--plot")
    space = load_space(space_name) if space_name else None
    data = load_profile_data(profile_dir, metric, space, backend, precision)
    shape = resolve_shape(data, model_path)
    log(f"fitting {metric} on {len(data.y)} sub-networks of {data.target} ({data.n_flagged} flagged visits dropped)")
    result = fit_profile(data, shape, metric, test_fraction, seed)
    saved = result.predictor.save(out_path)
    if plot_path:
        title = f"{data.target} {data.setting['backend']} {data.setting['precision']}: {metric}"
        plot_predictions(result.y_test, result.pred_test, plot_path, title, result.data_summary["unit"])
    emit(result.to_dict() | {"predictor": str(saved), "plot": plot_path}, as_json, _render_fit)


def _check_out(path: str, suffix: str, option: str) -> None:
    p = Path(path)
    if p.suffix != suffix:
        raise BadInputError(f"{option} {path}: expected a {suffix} file name")
    if p.is_dir():
        raise BadInputError(f"{option} {path}: is a directory")


def _render_fit(r: dict) -> str:
    d, unit = r["data"], r["data"]["unit"]
    setting = ", ".join(f"{k} {v}" for k, v in d["setting"].items() if k != "shapes")
    head = (
        f"{r['metadata']['metric']} of {d['target']} ({setting}; shapes {d['setting']['shapes']})\n"
        f"{d['n_subnets']} sub-networks: {d['n_train']} to fit (hyper-parameters by "
        f"{'cross-validation' if r['metadata']['cv_mape_pct'] is not None else 'default'}), "
        f"{d['n_test']} held out; {d['n_flagged_dropped']} flagged measurements dropped\n"
    )
    rows = [[row["model"], *_metric_cells(row)] for row in r["comparison"]]
    curve = [[row["n_train"], row["draws"], *_metric_cells(row)] for row in r["learning_curve"]]
    headers = ["MAPE %", f"RMSE {unit}", "±5 %", "±10 %", "Spearman", "Kendall"]
    parts = [head, "held-out split, same for every model:", table(rows, ["model", *headers])]
    if curve:
        parts += ["", "learning curve (ours, same held-out split):", table(curve, ["fitted on", "draws", *headers])]
    parts += ["", f"saved {r['predictor']}" + (f"; plot {r['plot']}" if r["plot"] else "")]
    return "\n".join(parts)


def _metric_cells(row: dict) -> list[str]:
    return [
        f"{row['mape_pct']:.2f}",
        f"{row['rmse']:.4g}",
        f"{row['within_5_pct']:.1f}",
        f"{row['within_10_pct']:.1f}",
        f"{row['spearman']:.4f}",
        f"{row['kendall']:.4f}",
    ]


@click.command()
@click.option("--predictor", "predictor_path", required=True, help="Predictor file written by `llamanas fit`.")
@click.option("--subnet", "subnet_arg", required=True, help="Sub-network JSON file (one or many lines), inline JSON or FRONT.json#INDEX.")
@click.option("--space", "space_name", default=None, help="Space the sub-networks come from; refused if not the predictor's.")
@click.option("--target-profile", default=None, help="Profile directory of the device you mean; refused if not the predictor's.")
@json_option
def predict(predictor_path: str, subnet_arg: str, space_name: str | None, target_profile: str | None, as_json: bool) -> None:
    """Predict a figure of sub-networks with a fitted predictor."""
    from ..predict.estimator import LatencyPredictor
    from ..space import load_space

    predictor = LatencyPredictor.load(predictor_path)
    if space_name:
        predictor.check_space(load_space(space_name))
    if target_profile:
        from ..profile.store import FINGERPRINT_FILE, read_fingerprint

        predictor.check_target(read_fingerprint(Path(target_profile) / FINGERPRINT_FILE))
    space = predictor.features.space
    configs = [space.validate(c, subnet_arg) for c in _read_configs(subnet_arg)]
    values = predictor.predict(configs)
    meta = predictor.metadata_
    result = {
        "predictor": predictor_path,
        **{k: meta.get(k) for k in ("metric", "unit", "target", "fingerprint_id", "backend", "precision", "space_id", "shapes")},
        "test_mape_pct": meta.get("test_metrics", {}).get("mape_pct"),
        "predictions": [{"subnet_id": c.id, "subnet": c.to_dict(), "value": float(v)} for c, v in zip(configs, values)],
    }
    emit(result, as_json, _render_predict)


def _read_configs(value: str) -> list:
    from ..subnet_config import read_subnet_arg, read_subnets

    single = "#" in value or value.lstrip().startswith("{")
    return [read_subnet_arg(value)] if single else read_subnets(value)


def _render_predict(r: dict) -> str:
    rows = [[p["subnet_id"], p["subnet"]["num_layers"], sum(p["subnet"]["intermediate_sizes"]), p["value"]] for p in r["predictions"]]
    error = f"held-out MAPE {r['test_mape_pct']:.2f}%" if r["test_mape_pct"] is not None else "no held-out figure"
    head = f"{r['metric']} on {r['target']} ({r['backend']} {r['precision']}, shapes {r['shapes']}); {error}"
    return head + "\n" + table(rows, ["sub-network", "layers", "total MLP width", f"{r['metric']} ({r['unit']})"])
