"""`llamanas export` end to end on a small real checkpoint: ORT vs torch, KV cache, quantized
artifacts, failed verification, bad inputs, tampering, determinism, onnxruntime-genai.

Exports are the slow part (~15 s each on 2 cores), so a few artifacts are built once per module.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_checkpoint, write_byte_tokenizer, write_space
from llamanas_deploy.cli import main
from llamanas_deploy.onnx_model.artifact import MANIFEST, file_hashes
from llamanas_deploy.errors import BadInputError
from llamanas_deploy.exporter import BenchSettings, ExportSettings, export as export_artifact
from llamanas_deploy.model.compat import returned_cache
from llamanas_deploy.profiler.base import Shapes
from llamanas_deploy.profiler.stats import Protocol
from llamanas_deploy.runtime import OrtDecoder, generate, open_artifact, perplexity
from llamanas_deploy.subnet_config import SubnetConfig

SUBNET = SubnetConfig(3, (128, 64, 96))
SUBNET_JSON = json.dumps(SUBNET.to_dict())
QUICK_PROTOCOL = Protocol(warmup=1, repeats=3, max_attempts=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """Small checkpoint with a tokenizer and held-out English text, as a shipped model has."""
    from pydoc_data.topics import topics

    path = make_checkpoint(tmp_path_factory.mktemp("export") / "model")
    write_byte_tokenizer(path)
    (path / "heldout.txt").write_text("\n\n".join(topics[k] for k in sorted(topics)[:6]))
    return path


@pytest.fixture(scope="module")
def space_file(tmp_path_factory) -> Path:
    return write_space(tmp_path_factory.mktemp("space") / "space.json")


def export(model, space_file: Path, out: Path, precision: str, bench: BenchSettings | None = None, **kw) -> dict:
    result = export_artifact(model, str(space_file), SUBNET, ExportSettings(precision=precision), out=out, bench=bench, **kw)
    assert result.directory == out and result.to_dict() == {"artifact": str(out), **result.manifest}
    return result.manifest


PREDICTOR_SHAPES = {"batch_size": 1, "prompt_len": 8, "context_len": 8, "gen_len": 4}


@pytest.fixture(scope="module")
def predictor_file(model_dir, space_file, tmp_path_factory) -> Path:
    """A real XGBoost predictor for this space and device; its targets are made up (a fixed cost per neuron)."""
    from llamanas_deploy.model.families import read_shape
    from llamanas_deploy.predict.estimator import LatencyPredictor
    from llamanas_deploy.predict.features import FeatureBuilder
    from llamanas_deploy.profiler.fingerprint import current_fingerprint
    from llamanas_deploy.space import load_space

    space = load_space(str(space_file))
    configs = space.sample_random(24, seed=0)
    y = [0.05 + 0.1 * c.num_layers + 0.001 * sum(c.intermediate_sizes) for c in configs]
    provenance = {"target": "test", "fingerprint_id": current_fingerprint()["fingerprint_id"], "backend": "onnxruntime",
                  "precision": "int8", "device": "cpu", "threads": 1, "clock": "wall", "statistic": "best"}  # fmt: skip
    features = FeatureBuilder(space, read_shape(model_dir), PREDICTOR_SHAPES)
    predictor = LatencyPredictor(features, "decode_ms", param_grid={"max_depth": (2,), "num_boost_round": (10,)},
                                 cv_folds=3).fit(configs, y, provenance=provenance)  # fmt: skip
    return predictor.save(tmp_path_factory.mktemp("predictor") / "decode.json")


@pytest.fixture(scope="module")
def export_events() -> list:
    """The progress events of the fp32 export."""
    return []


@pytest.fixture(scope="module")
def artifacts(model_dir, space_file, predictor_file, tmp_path_factory, export_events) -> dict[str, Path]:
    from llamanas_deploy.model.supernet import SuperNetwork

    root = tmp_path_factory.mktemp("artifacts")
    # a loaded super-network is used as is; no measurement
    export(SuperNetwork.load(model_dir), space_file, root / "fp32", "fp32", callback=export_events.append)
    quick = BenchSettings(protocol=QUICK_PROTOCOL)  # shapes, threads, clock: the predictor's
    export(model_dir, space_file, root / "int8", "int8", bench=quick, predictor=predictor_file)
    export(str(model_dir), space_file, root / "int4", "int4")
    return {p: root / p for p in ("fp32", "int8", "int4")}


def torch_subnet(model_dir: Path):
    from llamanas_deploy.model.supernet import SuperNetwork

    return SuperNetwork.load(model_dir).extract(SUBNET)


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out, err = capsys.readouterr()
    return done.value.code, out, err


def assert_one_line_error(code: int, err: str, status: int, *fragments: str) -> None:
    assert code == status, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err


# ---- the Python API ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings, param",
    [({"precision": "int2"}, "precision"), ({"device": "tpu"}, "device"), ({"max_eval_tokens": 100}, "max_eval_tokens"),
     ({"max_ppl_increase_pct": float("nan")}, "max_ppl_increase_pct"), ({"block_size": 48}, "block_size"),
     ({"accuracy_level": 9}, "accuracy_level")],
)  # fmt: skip
def test_export_settings_refuse_bad_values_naming_the_parameter(settings, param):
    with pytest.raises(BadInputError) as err:
        ExportSettings(**settings)
    assert err.value.param == param and str(err.value).startswith(f"{param}: ") and "--" not in str(err.value)


@pytest.mark.parametrize(
    "settings, param",
    [({"threads": 0}, "threads"), ({"clock": "sundial"}, "clock"), ({"shapes": {"prompt_len": 0}}, "prompt_len"),
     ({"shapes": {"prompt": 8}}, "shapes"), ({"protocol": {"visits": 3}}, "protocol")],
)  # fmt: skip
def test_bench_settings_refuse_bad_values_naming_the_parameter(settings, param):
    with pytest.raises(BadInputError) as err:
        BenchSettings(**settings)
    assert err.value.param == param


def test_bench_settings_fill_partial_shapes_from_the_prediction():
    predicted = {"shapes": PREDICTOR_SHAPES}
    assert BenchSettings().shapes_for(predicted).to_dict() == PREDICTOR_SHAPES
    assert BenchSettings(shapes={"gen_len": 2}).shapes_for(predicted).to_dict() == PREDICTOR_SHAPES | {"gen_len": 2}
    assert BenchSettings(shapes={"gen_len": 2}).shapes_for({}) == Shapes(gen_len=2)
    assert BenchSettings(shapes=Shapes(2, 4, 4, 4)).shapes_for(predicted) == Shapes(2, 4, 4, 4)


def test_cli_restates_a_settings_error_with_its_flag(model_dir, space_file, tmp_path, capsys):
    code, _, err = run_cli(capsys, "export", "--model", str(model_dir), "--space", str(space_file),
                           "--subnet", SUBNET_JSON, "--out", str(tmp_path / "a"), "--precision", "int4",
                           "--block-size", "48")  # fmt: skip
    assert_one_line_error(code, err, 2, "--block-size: 48")  # ExportSettings' block_size error, as the CLI's flag
    assert not (tmp_path / "a").exists()


def test_export_with_a_loaded_supernet_and_no_bench(artifacts, model_dir, export_events):
    manifest = open_artifact(artifacts["fp32"]).manifest
    assert manifest["measured"] is None and manifest["predicted"] is None
    assert manifest["super_network"]["path"] == str(model_dir)
    steps = [e.status for e in export_events]
    assert steps == ["load", "export", "verify", "artifact", "done"]
    assert {e.stage for e in export_events} == {"export"} and export_events[-1].done == export_events[-1].total == 4


def test_generate_text_returns_the_continuation(artifacts):
    from llamanas_deploy.runtime import Sampling, generate_text

    result = generate_text(artifacts["int8"], "The for statement", 5)
    assert isinstance(result.text, str) and result.new_tokens == len(result.tokens) == 5
    assert result.prompt_tokens == len("The for statement") and result.tok_s > 0
    assert result.to_dict()["text"] == result.text and result.to_dict()["tokens"] == result.tokens
    again = generate_text(artifacts["int8"], "The for statement", 5, Sampling(temperature=0.0, seed=7), threads=1)
    assert (again.text, again.tokens) == (result.text, result.tokens)  # greedy: the seed does not matter


# ---- fp32 against torch -------------------------------------------------------------------------
def test_ort_logits_match_torch(artifacts, model_dir):
    import torch

    manifest = open_artifact(artifacts["fp32"]).manifest
    figures = manifest["verification"]["fp32_vs_torch"]
    assert figures["prefill"]["logits_max_abs_diff"] <= 1e-4 and figures["decode"]["logits_max_abs_diff"] <= 1e-4
    # independently of the exporter's own check: another batch size and length
    ids = np.random.default_rng(7).integers(0, 256, (3, 17))
    decoder = OrtDecoder(artifacts["fp32"] / "model.onnx")
    logits, present = decoder.forward(ids, decoder.empty_past(3))
    with torch.no_grad():
        ref = torch_subnet(model_dir)(input_ids=torch.from_numpy(ids), use_cache=True)
    assert np.abs(logits - ref.logits.numpy()).max() <= 1e-4
    assert np.abs(present["past_key_values.2.value"] - returned_cache(ref).layers[2].values.numpy()).max() <= 1e-4


def test_io_follows_optimum_names_with_dynamic_axes(artifacts):
    session = OrtDecoder(artifacts["fp32"] / "model.onnx").session
    inputs = {i.name: i.shape for i in session.get_inputs()}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert list(inputs)[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert inputs["past_key_values.2.value"] == ["batch_size", 4, "past_sequence_length", 16]
    assert outputs["logits"] == ["batch_size", "sequence_length", 256]
    assert outputs["present.0.key"][2] == "past_sequence_length + sequence_length"
    assert len(inputs) == 3 + 2 * SUBNET.num_layers and len(outputs) == 1 + 2 * SUBNET.num_layers


def test_decode_with_cache_matches_full_recomputation(artifacts):
    decoder = OrtDecoder(artifacts["fp32"] / "model.onnx")
    ids = np.random.default_rng(3).integers(0, 256, (2, 12))
    full, _ = decoder.forward(ids, decoder.empty_past(2))
    logits, past = decoder.forward(ids[:, :6], decoder.empty_past(2))
    steps = [logits[:, -1]]
    for t in range(6, 12):
        logits, past = decoder.forward(ids[:, t : t + 1], past)
        steps.append(logits[:, -1])
    assert past["past_key_values.0.key"].shape[2] == 12
    assert np.abs(np.stack(steps[:-1], 1) - full[:, 5:11]).max() <= 1e-4
    assert np.abs(steps[-1] - full[:, 11]).max() <= 1e-4


def test_runtime_perplexity_matches_torch(artifacts, model_dir):
    import torch
    import torch.nn.functional as F

    tokens = np.random.default_rng(5).integers(0, 256, 300).tolist()
    ort = perplexity(OrtDecoder(artifacts["fp32"] / "model.onnx"), tokens, seq_len=64, batch_size=3)
    rows = torch.tensor(tokens[: 4 * 64]).view(4, 64)
    with torch.no_grad():
        logits = torch_subnet(model_dir)(input_ids=rows).logits[:, :-1]
    loss = F.cross_entropy(logits.reshape(-1, 256), rows[:, 1:].reshape(-1)).item()
    assert ort.num_tokens == 4 * 63
    assert ort.loss == pytest.approx(loss, abs=1e-5)


# ---- quantized artifacts --------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_artifacts_run_and_report(artifacts, precision):
    artifact = open_artifact(artifacts[precision])
    manifest = artifact.manifest
    check = manifest["verification"]["quantized_vs_fp32"]
    assert manifest["verification"]["data"].endswith("heldout.txt")
    assert check["num_tokens"] > 1000 and 0 <= check["greedy_agreement"] <= 1
    # random weights: near-uniform predictions, so quantization barely moves perplexity
    assert abs(check["perplexity_change_pct"]) < 5
    # no limit given: the precision's default gate, stated in the manifest
    assert check["max_perplexity_increase_pct"] == {"int8": 2.0, "int4": 60.0}[precision]
    # the fused CPU graph quantizes every MatMul, the LM head included
    quantization = manifest["quantization"]
    assert quantization["method"] == "MatMulNBits" and quantization["bits"] == {"int8": 8, "int4": 4}[precision]
    assert quantization["excluded_nodes"] == []
    assert manifest["size"]["onnx_bytes"] < open_artifact(artifacts["fp32"]).manifest["size"]["onnx_bytes"]
    out = generate(artifact.decoder(), [5, 6, 7], 6)
    assert len(out.tokens) == 6 and all(0 <= t < 256 for t in out.tokens)


def test_int8_artifact_carries_prediction_and_measurement(artifacts, predictor_file):
    from llamanas_deploy.predict.estimator import LatencyPredictor

    manifest = open_artifact(artifacts["int8"]).manifest
    predicted, measured = manifest["predicted"], manifest["measured"]
    assert predicted["value"] == pytest.approx(float(LatencyPredictor.load(predictor_file).predict([SUBNET])[0]))
    assert predicted["metric"] == "decode_ms" and predicted["predictor"] == str(predictor_file)
    assert measured["backend"] == "onnxruntime" and measured["precision"] == "int8" and measured["threads"] == 1
    assert measured["decode_ms"]["median"] > 0 and measured["throughput_tok_s"]["median"] > 0
    assert measured["shapes"] == PREDICTOR_SHAPES  # measured as the predictor's profile was
    vs = measured["vs_predicted"]
    # compared with the statistic the predictor learned: the fast end
    assert predicted["statistic"] == "best"
    assert vs["same_setup"] and vs["measured"] == measured["decode_ms"]["best"] <= measured["decode_ms"]["median"]
    assert vs["error_pct"] == pytest.approx((vs["predicted"] / vs["measured"] - 1) * 100)


TRAINED_TINY = Path(__file__).resolve().parent.parent / "llamanas_deploy" / "assets" / "tiny" / "model.safetensors"


@pytest.mark.slow
@pytest.mark.skipif(not TRAINED_TINY.is_file(), reason="the trained tiny super-network is not built yet (assets/tiny/model.safetensors)")
@pytest.mark.parametrize("precision,max_increase_pct", [("int8", 2.0), ("int4", 5.0)])
def test_quantized_tiny_stays_within_stated_perplexity_change(tmp_path, precision, max_increase_pct):
    settings = ExportSettings(precision=precision, max_eval_tokens=2048, max_ppl_increase_pct=max_increase_pct)
    result = export_artifact("tiny", "tiny", SubnetConfig(5, (768, 576, 384, 576, 768)), settings, out=tmp_path / "a", bench=None)
    check = result.manifest["verification"]["quantized_vs_fp32"]
    assert check["perplexity_change_pct"] <= max_increase_pct
    assert check["greedy_agreement"] >= 0.5


# ---- failures write nothing -------------------------------------------------------------------
def test_failed_verification_exits_1_and_writes_nothing(model_dir, space_file, tmp_path, capsys):
    out = tmp_path / "never"
    # 4-bit weights raise this model's perplexity (deterministically), and no rise is allowed
    code, stdout, err = run_cli(
        capsys, "export", "--model", str(model_dir), "--space", str(space_file), "--subnet", SUBNET_JSON,
        "--precision", "int4", "--out", str(out), "--no-bench", "--quiet", "--max-ppl-increase", "0",
    )  # fmt: skip
    assert_one_line_error(code, err, 1, "failed verification", "perplexity increase %", "> 0")
    assert stdout == "" and not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind


def test_non_empty_out_is_refused_and_kept(model_dir, space_file, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "export", "--model", str(model_dir), "--space", str(space_file),
                           "--subnet", SUBNET_JSON, "--out", str(tmp_path))  # fmt: skip
    assert_one_line_error(code, err, 2, str(tmp_path), "not an empty directory")
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"] and (tmp_path / "keep.txt").read_text() == "mine"


def test_subnet_outside_the_space_is_bad_input(model_dir, space_file, tmp_path, capsys):
    subnet = json.dumps({"num_layers": 3, "intermediate_sizes": [128, 100, 32]})
    code, _, err = run_cli(capsys, "export", "--model", str(model_dir), "--space", str(space_file),
                           "--subnet", subnet, "--out", str(tmp_path / "a"))  # fmt: skip
    assert_one_line_error(code, err, 2, "layer 1", "100", "{32, 64, 96, 128}")
    assert not (tmp_path / "a").exists()


# ---- reading artifacts ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["generate", "bench"])
def test_tampered_artifact_is_refused(artifacts, tmp_path, capsys, command):
    copy = tmp_path / "copy"
    shutil.copytree(artifacts["int4"], copy)
    config = json.loads((copy / "genai_config.json").read_text())
    config["search"]["max_length"] = 7
    (copy / "genai_config.json").write_text(json.dumps(config))
    extra = ["--prompt", "hi"] if command == "generate" else []
    code, out, err = run_cli(capsys, command, "--artifact", str(copy), *extra)
    assert_one_line_error(code, err, 2, "genai_config.json", "sha256", "does not match")
    assert out == ""


def test_generate_runs_without_torch(artifacts):
    script = (
        "import json, sys\n"
        "from llamanas_deploy.cli import main\n"
        "try:\n"
        f"    main(['generate', '--artifact', {str(artifacts['int8'])!r}, '--prompt', 'The for statement',"
        " '--max-new-tokens', '5', '--temperature', '0.8', '--top-k', '20', '--seed', '3', '--json'])\n"
        "except SystemExit as done:\n"
        "    print(json.dumps({'code': done.code, 'torch': 'torch' in sys.modules,"
        " 'transformers': 'transformers' in sys.modules}), file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    status = json.loads(proc.stderr.strip().splitlines()[-1])
    assert status == {"code": 0, "torch": False, "transformers": False}, proc.stderr
    result = json.loads(proc.stdout)
    assert result["new_tokens"] == 5 and result["tok_s"] > 0 and isinstance(result["text"], str)
    assert result["prompt_tokens"] == len("The for statement")  # byte-level tokenizer


def test_sampling_is_seeded_and_top_k_1_is_greedy(artifacts):
    from llamanas_deploy.runtime import Sampling

    decoder = OrtDecoder(artifacts["fp32"] / "model.onnx")
    greedy = generate(decoder, [9, 8, 7], 8).tokens
    assert generate(decoder, [9, 8, 7], 8, Sampling(temperature=1.0, top_k=1, seed=1)).tokens == greedy
    sampled = [generate(decoder, [9, 8, 7], 8, Sampling(temperature=2.0, seed=s)).tokens for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]


def test_bench_command_measures_and_compares_with_the_prediction(artifacts, capsys):
    args = ("--repeats", "3", "--warmup", "0", "--visits", "2", "--json")
    code, out, err = run_cli(capsys, "bench", "--artifact", str(artifacts["int8"]), *args)
    assert code == 0, err
    result = json.loads(out)
    assert result["precision"] == "int8" and result["shapes"] == PREDICTOR_SHAPES  # the predictor's shapes by default
    for figure in ("prefill_ms", "decode_ms", "throughput_tok_s"):
        # a visit flagged as noisy on a busy machine is left out of n (Measurement.combine)
        assert result[figure]["median"] > 0 and result[figure]["n"] >= 3 and result[figure]["visits"] == 2
    assert result["vs_predicted"]["metric"] == "decode_ms" and math.isfinite(result["vs_predicted"]["error_pct"])
    code, out, _ = run_cli(capsys, "bench", "--artifact", str(artifacts["int4"]), "--gen-len", "2", "--repeats", "3")
    assert code == 0 and "decode ms/token" in out and "predicted" not in out  # no predictor named in this one


def test_export_is_deterministic(artifacts, model_dir, space_file, tmp_path):
    again = tmp_path / "int4-again"
    export(model_dir, space_file, again, "int4")
    first, second = (json.loads((d / MANIFEST).read_text()) for d in (artifacts["int4"], again))
    assert file_hashes(again) == file_hashes(artifacts["int4"]) == first["files"]
    assert {k: v for k, v in first.items() if k != "measured"} == {k: v for k, v in second.items() if k != "measured"}


def test_onnxruntime_genai_loads_and_runs_the_artifact(artifacts):
    og = pytest.importorskip("onnxruntime_genai")
    model = og.Model(str(artifacts["fp32"]))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=3 + 8, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(np.array([[9, 8, 7]], dtype=np.int32))
    tokens = []
    while not generator.is_done():
        generator.generate_next_token()
        tokens.append(int(generator.get_next_tokens()[0]))
    ours = generate(OrtDecoder(artifacts["fp32"] / "model.onnx"), [9, 8, 7], 8).tokens
    assert tokens == ours
    text = "The for statement"
    assert og.Tokenizer(model).encode(text).tolist() == open_artifact(artifacts["fp32"]).tokenizer().encode(text).ids
