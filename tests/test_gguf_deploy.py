"""A GGUF artifact in the loop: a llama.cpp predictor transferred from torch's on this device, recorded
and checked by `export --format gguf`, and `llamanas run --export-format gguf` end to end on `tiny`."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")

from llamanas_deploy.cli import main  # noqa: E402
from llamanas_deploy.errors import BadInputError  # noqa: E402
from llamanas_deploy.loop import RUN_FILE, RunSettings  # noqa: E402
from llamanas_deploy.onnx_model.artifact import read_manifest  # noqa: E402
from llamanas_deploy.predict.dataset import MIN_SUBNETS  # noqa: E402
from llamanas_deploy.predict.transfer import MIN_TRANSFER_SUBNETS  # noqa: E402

SHAPES = ["--prompt-len", "8", "--context-len", "8", "--gen-len", "4"]  # a transfer needs the source's lengths
# never flagged: how many sub-networks a fit can use must not depend on the machine's noise
SETTING = ["--threads", "1", "--clock", "cpu", "--warmup", "1", "--repeats", "3", "--visits", "1", "--max-cv", "1000",
           "--quiet"]  # fmt: skip
HETEROGENEOUS = {"num_layers": 4, "intermediate_sizes": [768, 192, 576, 384]}


def cli(*args: str) -> tuple[int, str, str]:
    """`llamanas ARGS` in-process: exit code, stdout, stderr (module fixtures have no capsys)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(SystemExit) as done, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        main(list(args))
    return done.value.code, out.getvalue(), err.getvalue()


def profile(out: Path, backend: str, precision: str, samples: int) -> Path:
    code, _, err = cli("profile", "--model", "tiny", "--space", "tiny", "--target", "test", "--out", str(out),
                       "--backend", backend, "--precision", precision, "--samples", str(samples), *SHAPES, *SETTING)  # fmt: skip
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Path:
    """A llama.cpp q8_0 decode predictor of this machine, fitted on a few sub-networks with transfer
    from a torch profile of the same machine (a format transfer)."""
    root = tmp_path_factory.mktemp("gguf-deploy")
    torch_profile = profile(root / "torch", "torch", "fp32", MIN_SUBNETS)
    llamacpp_profile = profile(root / "llamacpp", "llamacpp", "q8_0", MIN_TRANSFER_SUBNETS + 1)
    path = root / "llamacpp-q8_0-decode_ms.json"
    code, _, err = cli("fit", "--profile", str(llamacpp_profile), "--metric", "decode_ms",
                       "--transfer-from", str(torch_profile), "--out", str(path))  # fmt: skip
    assert code == 0, err
    return path


def test_a_llamacpp_predictor_transfers_from_torch_on_the_same_device(predictor):
    metadata = json.loads(predictor.read_text())["metadata"]
    assert (metadata["backend"], metadata["precision"]) == ("llamacpp", "q8_0")
    assert metadata["transfer"]["kind"] == "format"
    assert (metadata["transfer"]["source"]["backend"], metadata["transfer"]["source"]["precision"]) == ("torch", "fp32")


def test_export_gguf_records_the_prediction_and_measures_it(predictor, tmp_path):
    out = tmp_path / "artifact"
    code, stdout, err = cli("export", "--format", "gguf", "--precision", "q8_0", "--model", "tiny", "--space", "tiny",
                            "--subnet", json.dumps(HETEROGENEOUS), "--predictor", str(predictor), "--out", str(out),
                            "--repeats", "3", "--visits", "1", "--json", "--quiet")  # fmt: skip
    assert code == 0, err
    manifest = read_manifest(out)  # sealed with both blocks
    assert json.loads(stdout)["measured"] == manifest["measured"]
    predicted, measured = manifest["predicted"], manifest["measured"]
    assert (predicted["backend"], predicted["precision"], predicted["predictor"]) == ("llamacpp", "q8_0", str(predictor))
    # measured as the predictor was trained: its backend, threads, clock and lengths
    assert (measured["backend"], measured["threads"], measured["clock"]) == ("llamacpp", 1, "cpu")
    assert measured["shapes"] == predicted["shapes"] == {"batch_size": 1, "prompt_len": 8, "context_len": 8, "gen_len": 4}
    vs = measured["vs_predicted"]
    assert vs["same_setup"] is True and vs["predicted"] == predicted["value"] > 0
    assert vs["error_pct"] == pytest.approx((vs["predicted"] - vs["measured"]) / vs["measured"] * 100)
    code, stdout, err = cli("bench", "--artifact", str(out), "--repeats", "3", "--visits", "1", "--json")
    assert code == 0, err
    assert json.loads(stdout)["vs_predicted"]["predicted"] == predicted["value"]


def test_export_gguf_refuses_a_predictor_of_another_space_before_writing(tmp_path):
    out = tmp_path / "artifact"
    other = next(Path("predictors").glob("*-smollm2-*.json"))
    code, stdout, err = cli("export", "--format", "gguf", "--model", "tiny", "--space", "tiny", "--subnet", "smallest",
                            "--predictor", str(other), "--out", str(out))  # fmt: skip
    assert code == 2 and stdout == "" and err.count("\n") == 1 and "Traceback" not in err, err
    assert str(other) in err and "space" in err
    assert not out.exists()


def test_export_gguf_refuses_a_bench_llama_cpp_cannot_run_before_writing(tmp_path, monkeypatch):
    from llamanas_deploy.exporter import gguf

    monkeypatch.setattr(gguf, "write_gguf", lambda *args: pytest.fail("written before the shapes were checked"))
    out = tmp_path / "artifact"
    code, stdout, err = cli("export", "--format", "gguf", "--model", "tiny", "--space", "tiny", "--subnet", "smallest",
                            "--batch-size", "2", "--out", str(out))  # fmt: skip
    assert (code, stdout) == (2, "") and err.startswith("error: --batch-size: backend llamacpp decodes one sequence"), err
    assert not out.exists()


def test_export_gguf_without_bench_measures_nothing(tmp_path):
    out = tmp_path / "artifact"
    code, _, err = cli("export", "--format", "gguf", "--model", "tiny", "--space", "tiny", "--subnet", "smallest",
                       "--no-bench", "--out", str(out), "--quiet")  # fmt: skip
    assert code == 0, err
    manifest = read_manifest(out)
    assert manifest["measured"] is None and manifest["predicted"] is None


# ---- llamanas run --export-format gguf ----------------------------------------------------------
RUN_ARGS = ["--export-format", "gguf", "--export-precision", "q8_0", "--population", "4", "--evaluations", "8",
            "--eval-tokens", "256", "--samples", "12", "--visits", "1", "--max-cv", "1000", "--max-latency", "1000",
            "--quiet", "--json"]  # fmt: skip


@pytest.fixture(scope="module")
def gguf_run(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("gguf-run") / "run"
    done = subprocess.run([sys.executable, "-m", "llamanas_deploy", "run", "--out", str(out), *RUN_ARGS],
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads(done.stdout)


def test_run_searches_on_llama_cpp_latency_and_deploys_a_gguf(gguf_run):
    out, summary = gguf_run
    predictor, deployed, artifact = summary["predictor"], summary["deployed"], summary["artifact"]
    assert (predictor["backend"], predictor["precision"]) == ("llamacpp", "q8_0")
    assert predictor["transfer"]["kind"] == "format" and deployed["backend"] == "llamacpp"
    assert (artifact["format"], artifact["precision"]) == ("gguf", "q8_0")
    manifest = read_manifest(out / "artifact")
    assert manifest["subnet_id"] == summary["rows"][1]["subnet_id"]
    assert artifact["file_mib"] == pytest.approx(manifest["size"]["gguf_bytes"] / 2**20)
    assert manifest["measured"]["vs_predicted"]["same_setup"] is True
    assert manifest["predicted"]["value"] == pytest.approx(summary["rows"][1]["predicted_decode_ms"], rel=1e-6)
    assert [row["measured_decode_ms"] > 0 for row in summary["rows"]] == [True, True]


def test_run_resumes_a_gguf_run(gguf_run):
    out, summary = gguf_run
    again = subprocess.run([sys.executable, "-m", "llamanas_deploy", "run", "--out", str(out), *RUN_ARGS],
                           capture_output=True, text=True, timeout=900)  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert "export: reusing" in again.stderr
    assert json.loads(again.stdout)["rows"][1]["subnet_id"] == summary["rows"][1]["subnet_id"]


@pytest.mark.parametrize(
    ("settings", "param"),
    [({"export_format": "gguf", "export_precision": "int8"}, "export_precision"),
     ({"export_format": "gguf", "device": "cuda"}, "device"),
     ({"export_format": "onnx", "export_precision": "q4_0"}, "export_precision"),
     ({"export_format": "tflite"}, "export_format")],
)  # fmt: skip
def test_run_settings_refuse_a_precision_of_another_format(settings, param):
    with pytest.raises(BadInputError) as raised:
        RunSettings(**settings)
    assert raised.value.param == param


def test_each_format_has_its_default_precision():
    assert RunSettings().export_precision == "int8"
    assert RunSettings(export_format="gguf").export_precision == "q8_0"


def test_a_run_directory_from_before_export_format_resumes(tmp_path):
    from llamanas_deploy.loop import _check_run_dir

    out = tmp_path / "run"
    out.mkdir()
    old = asdict(RunSettings())
    del old["export_format"]
    (out / RUN_FILE).write_text(json.dumps(old))
    _check_run_dir(RunSettings(), out)  # the same run: resumed
    with pytest.raises(BadInputError, match="export_format"):
        _check_run_dir(RunSettings(export_format="gguf"), out)

