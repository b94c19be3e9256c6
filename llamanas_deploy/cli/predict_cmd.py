"""`llamanas fit` (a predictor from a hardware profile) and `llamanas predict` (query one)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from ..concepts import METRICS
from ..errors import BadInputError
from ..jsonfiles import read_json
from ..predict.dataset import DRIFT_CORRECTIONS
from ..predict.predictor_file import FILE_FORMAT
from ..predict.query import predict_subnets
from ..predict.train import FitSettings
from ..predict.train import fit as fit_predictor
from .common import emit, progress_printer, table
from .options import (
    JSON, MANY_SUBNETS, MODEL, OUT, PREDICTOR, PROFILE_PRECISION, SEED, SPACE, SUBNET, FiniteFloat, default_of,
    settings_from,
)  # fmt: skip
from .registry_options import BACKEND

WHEN_SEVERAL = "The one to fit on, when the profile holds several."  # the note of the options that choose among its records


@click.command()
@click.option("--profile", required=True, help="Hardware profile directory (hardware_profiles/<target>).")
@click.option("--metric", type=click.Choice(sorted(METRICS)), default=default_of(fit_predictor, "metric"),
              show_default=True)  # fmt: skip
@BACKEND(note=WHEN_SEVERAL)
@PROFILE_PRECISION(note=WHEN_SEVERAL, old=("--precision",))
@SPACE(default=None, note="[the profile's built-in space]")
@MODEL(default=None, note="[the built-in model the profile names]")
@OUT(required=True, type=click.Path(path_type=Path), note="the predictor file to write, e.g. predictors/<name>.json.")
@click.option("--plot", "plot_path", default=None, help="PNG: predicted vs measured on the held-out split.")
@click.option("--test-fraction", default=default_of(FitSettings, "test_fraction"), show_default=True,
              type=FiniteFloat(0.05, 0.5))  # fmt: skip
@SEED(FitSettings, note="of the train/test split and of XGBoost.")
@click.option("--transfer-from", "transfer_from", default=None, metavar="PREDICTOR_OR_PROFILE",
              help="Source to transfer from: a predictor file or shipped name, or a profile directory, of the same space, "
                   "measured on another device with the same backend and precision, or on this device with another one.")
@click.option("--samples", "train_samples", type=click.IntRange(min=2), default=None,
              help="Fit on only the first K sub-networks of the training split, in measuring order [default: all].")
@click.option("--drift", type=click.Choice(DRIFT_CORRECTIONS), default=default_of(FitSettings, "drift"), show_default=True,
              help="anchor: correct each timing by the profile's anchor measured around it (the machine's change in "
                   "speed over the profile); none: the timings as measured.")  # fmt: skip
@click.option("--remeasure", is_flag=True,
              help="Measure the held-out sub-networks once more (needs the profile's model): shows whether the "
                   "predictor or the machine's own noise limits the accuracy.")  # fmt: skip
@JSON()
def fit(**opts) -> None:
    """Fit an XGBoost predictor of METRIC on a profile; compare it with baselines on a held-out split.

    With --transfer-from, the source's prediction is the prior and a few of this profile's
    sub-networks fit the rest (5 usable sub-networks suffice: 3 to fit, 2 held out).
    """
    _check_out(opts["out"], ".json", "--out")
    _check_replaces_a_predictor(opts["out"])
    if opts["plot_path"]:
        _check_out(opts["plot_path"], ".png", "--plot")
    settings = settings_from(FitSettings, opts)
    printer = progress_printer(quiet=False)
    try:
        result = fit_predictor(opts["profile"], opts["metric"], settings, space=opts["space_name"], supernet=opts["model"],
                               backend=opts["backend"], precision=opts["precision"], transfer_from=opts["transfer_from"],
                               callback=printer)  # fmt: skip
    finally:
        printer.close()
    saved = result.predictor.save(opts["out"])
    if opts["plot_path"]:
        result.plot(opts["plot_path"])
    emit(result.to_dict() | {"predictor": str(saved), "plot": opts["plot_path"]}, opts["as_json"], _render_fit)


def _check_out(path: str | Path, suffix: str, option: str) -> None:
    p = Path(path)
    if p.suffix != suffix:
        raise BadInputError(f"{option} {path}: expected a {suffix} file name")
    if p.is_dir():
        raise BadInputError(f"{option} {path}: is a directory")
    _check_writable(p, option)


def _check_replaces_a_predictor(path: Path) -> None:
    """`--out` may replace a predictor file, never another file (a search's front, a profile's record)."""
    if not path.exists():
        return
    try:
        existing = read_json(path, "file")
    except BadInputError:
        existing = None
    if not (isinstance(existing, dict) and existing.get("format") == FILE_FORMAT):
        raise BadInputError(f"--out {path}: exists and is not a predictor file; refusing to overwrite it")


def _check_writable(path: Path, option: str) -> None:
    """Refuse, before the slow fit, a file that could not be written: a temporary file in the nearest
    existing folder (where the atomic write creates its own) must be creatable."""
    folder = path.absolute().parent
    while not folder.exists():
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise BadInputError(f"{option} {path}: cannot write in {folder} ({err.strerror or err})") from None


def _render_fit(r: dict) -> str:
    d, unit = r["data"], r["data"]["unit"]
    setting = ", ".join(f"{k} {v}" for k, v in d["setting"].items() if k != "shapes")
    head = (
        f"{r['metadata']['metric']} of {d['target']} ({setting}; shapes {d['setting']['shapes']})\n"
        f"{d['n_subnets']} sub-networks: {d['n_train']} to fit (hyper-parameters by "
        f"{'cross-validation' if r['metadata']['cv_mape_pct'] is not None else 'default'}), "
        f"{d['n_test']} held out; {d['n_flagged_dropped']} flagged measurements dropped\n"
        f"{_drift_line(d)}\n"
    )
    if d.get("transfer"):
        t, src = d["transfer"], d["transfer"]["source"]
        what = "another device" if t["kind"] == "device" else "another backend/precision on this device"
        head += (f"transfer from {src['name']} ({what}: {src['target']}, {src['backend']} {src['precision']}; "
                 f"sha256 {src['sha256'][:12]}), {t['target_samples']} target sub-networks; prior = "
                 f"{t['prior_coef']['intercept']:.4g} + {t['prior_coef']['source_scale']:.4g} x source\n")  # fmt: skip
    rows = [[row["model"], *_metric_cells(row)] for row in r["comparison"]]
    curve = [[row["n_train"], row["draws"], *_metric_cells(row)] for row in r["learning_curve"]]
    headers = ["MAPE %", f"RMSE {unit}", "±5 %", "±10 %", "Spearman", "Kendall"]
    parts = [head, "held-out split, same for every model:", table(rows, ["model", *headers])]
    if curve:
        parts += ["", "learning curve (ours, same held-out split):", table(curve, ["fitted on", "draws", *headers])]
    if d.get("remeasured"):
        parts += ["", _remeasured_line(d["remeasured"])]
    parts += ["", f"saved {r['predictor']}" + (f"; plot {r['plot']}" if r["plot"] else "")]
    return "\n".join(parts)


def _remeasured_line(again: dict) -> str:
    if not again["n"]:
        return "re-measured the held-out sub-networks once more: every figure was too noisy (flagged) to compare"
    first, ours = again["first_vs_again"], again["predictor_vs_again"]
    return (f"re-measured {again['n']} held-out sub-networks once more: the profile's own figures are within ±10 % "
            f"of {first['within_10_pct']:.0f} % of them (MAPE {first['mape_pct']:.1f} %: the machine's noise), the "
            f"predictor of {ours['within_10_pct']:.0f} % (MAPE {ours['mape_pct']:.1f} %)")  # fmt: skip


def _drift_line(d: dict) -> str:
    anchor = d.get("drift_corrected_by")
    corrected = (f"timings corrected by {anchor['n']} anchor measurements (the machine's speed moved "
                 f"{anchor['range_pct']:.1f} % over the profile)") if anchor else "timings as measured (no anchor correction)"  # fmt: skip
    loaded = d.get("n_loaded", 0)
    return corrected + (f"; {loaded} kept records were measured under load (other processes or steal)" if loaded else "")


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
@PREDICTOR(required=True, note="Or a shipped predictor's name.")
@SUBNET(required=True, note=MANY_SUBNETS)
@SPACE(default=None, note="The sub-networks' space; refused if not the predictor's.")
@click.option("--target-profile", default=None, help="Profile directory of the device you mean; refused if not the predictor's.")
@JSON()
def predict(predictor: str, subnet_arg: str, space_name: str | None, target_profile: str | None, as_json: bool) -> None:
    """Predict a figure of sub-networks with a fitted predictor."""
    result = predict_subnets(predictor, subnet_arg, space=space_name, target_profile=target_profile)
    emit(result.to_dict(), as_json, _render_predict)


def _render_predict(r: dict) -> str:
    rows = [[p["subnet_id"], p["subnet"]["num_layers"], sum(p["subnet"]["intermediate_sizes"]), p["value"]] for p in r["predictions"]]
    error = f"held-out MAPE {r['test_mape_pct']:.2f}%" if r["test_mape_pct"] is not None else "no held-out figure"
    head = f"{r['metric']} on {r['target']} ({r['backend']} {r['precision']}, shapes {r['shapes']}); {error}"
    return head + "\n" + table(rows, ["sub-network", "layers", "total MLP width", f"{r['metric']} ({r['unit']})"])
