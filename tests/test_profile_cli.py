"""`llamanas profile` and `llamanas targets` end to end on small real models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import SMALL_CONFIG, write_space
from llamanas_deploy.cli import main
from llamanas_deploy.errors import BadInputError
from llamanas_deploy.model.supernet import SuperNetwork
from llamanas_deploy.profiler import ProfileResult, ProfileSettings, Protocol, Shapes, list_targets, profile
from llamanas_deploy.profiler.load import pin_cpus
from llamanas_deploy.space import load_space
from llamanas_deploy.profiler.weights import subnet_model
from llamanas_deploy.subnet_config import SubnetConfig

FAST = ["--prompt-len", "8", "--context-len", "8", "--gen-len", "4", "--warmup", "1", "--repeats", "3", "--quiet"]
ONE_VISIT = ["--visits", "1"]


@pytest.fixture(autouse=True)
def keep_torch_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run(capsys, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(list(args))
    out, err = capsys.readouterr()
    return done.value.code, out, err


def assert_bad_input(result, *fragments: str) -> None:
    code, out, err = result
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def records(profile_dir: Path, role: str | None = None) -> list[dict]:
    """The planned sub-networks' records (`role` None) or the anchor's ("anchor"), in measuring order."""
    rows = [json.loads(line) for line in (profile_dir / "measurements.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("role") == role]


def profile_args(model, space, out, *extra: str) -> list[str]:
    return ["profile", "--model", str(model), "--space", str(space), "--target", "test", "--out", str(out), *extra]


def test_profile_records_positive_figures_with_spreads(capsys, tmp_path, small_checkpoint, small_space_file):
    out = tmp_path / "prof"
    args = profile_args(small_checkpoint, small_space_file, out, "--samples", "3", *FAST, "--visits", "2", "--json")
    code, stdout, err = run(capsys, *args)
    assert code == 0, err
    summary = json.loads(stdout)
    assert (summary["planned"], summary["measured_now"], summary["records"], summary["subnets"]) == (6, 6, 6, 3)
    rows = records(out)
    # one whole pass over the plan, then the next
    assert [r["visit"] for r in rows] == [0, 0, 0, 1, 1, 1]
    assert [r["subnet_id"] for r in rows[:3]] == [r["subnet_id"] for r in rows[3:]]
    for row in rows:
        for figure in ("prefill_ms", "decode_ms", "throughput_tok_s"):
            spread = row[figure]
            assert spread["median"] > 0 and spread["iqr"] >= 0 and spread["cv"] >= 0 and spread["n"] >= 3
            assert spread["flagged"] == (spread["cv"] > 0.10)
            # the fast end: a lower time, a higher rate
            faster = spread["best"] >= spread["median"] if figure == "throughput_tok_s" else spread["best"] <= spread["median"]
            assert faster and spread["best"] > 0
        assert row["peak_mem_mib"] > 0 and row["model_bytes"] > 0
        assert row["flagged"] == any(row[f]["flagged"] for f in ("prefill_ms", "decode_ms", "throughput_tok_s"))
        assert (row["threads"], row["weights"], row["backend"], row["precision"]) == (1, "checkpoint", "torch", "fp32")
    # the plan starts with the smallest and the largest sub-network
    assert [r["subnet"]["num_layers"] for r in rows[:2]] == [2, 4]
    assert rows[1]["model_bytes"] > rows[0]["model_bytes"]
    # more visits later measure only the new pass
    code, stdout, _ = run(capsys, *args[:-3], "--visits", "3", "--json")
    assert code == 0 and json.loads(stdout)["measured_now"] == 3
    assert [r["visit"] for r in records(out)][6:] == [2, 2, 2]
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    assert fingerprint["target"] == "test" and fingerprint["fingerprint_id"] == rows[0]["fingerprint_id"]


def test_rerun_with_more_samples_adds_only_the_new_ones(capsys, tmp_path, small_checkpoint, small_space_file):
    out = tmp_path / "prof"
    args = profile_args(small_checkpoint, small_space_file, out, "--weights", "random", *FAST, *ONE_VISIT, "--json")
    assert run(capsys, *args, "--samples", "2")[0] == 0
    first = (out / "measurements.jsonl").read_bytes()
    code, stdout, _ = run(capsys, *args, "--samples", "4")
    assert code == 0 and json.loads(stdout)["measured_now"] == 2
    assert (out / "measurements.jsonl").read_bytes().startswith(first)
    rows = records(out)
    assert len({r["subnet_id"] for r in rows}) == len(rows) == 4
    assert {r["weights"] for r in rows} == {"random"}
    code, stdout, _ = run(capsys, *args, "--samples", "4")
    assert json.loads(stdout)["measured_now"] == 0 and len(records(out)) == 4


def test_bf16_halves_model_bytes(capsys, tmp_path, small_checkpoint, small_space_file):
    out = tmp_path / "prof"
    for precision in ("fp32", "bf16"):
        args = profile_args(small_checkpoint, small_space_file, out, "--samples", "1", "--precision", precision, *FAST, *ONE_VISIT)
        assert run(capsys, *args)[0] == 0
    fp32, bf16 = records(out)
    assert (fp32["subnet_id"], fp32["precision"], bf16["precision"]) == (bf16["subnet_id"], "fp32", "bf16")
    assert bf16["model_bytes"] * 2 == fp32["model_bytes"]


def test_largest_is_not_faster_than_smallest_at_prefill(capsys, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    config = SMALL_CONFIG | {"hidden_size": 128, "num_hidden_layers": 8, "intermediate_size": 1024}
    (model / "config.json").write_text(json.dumps(config))
    space = write_space(
        tmp_path / "extremes.json",
        super_network={"num_hidden_layers": 8, "intermediate_size": 1024},
        depth={"choices": [1, 8], "policy": "first"},
        layer_dims={"intermediate_sizes": {"choices": [32, 1024], "policy": "first"}},
    )
    out = tmp_path / "prof"
    args = profile_args(model, space, out, "--samples", "2", "--prompt-len", "64", "--context-len", "64",
                        "--gen-len", "4", "--warmup", "1", "--repeats", "5", *ONE_VISIT, "--quiet")  # fmt: skip
    assert run(capsys, *args)[0] == 0
    smallest, largest = records(out)
    assert (smallest["subnet"]["num_layers"], largest["subnet"]["num_layers"]) == (1, 8)
    assert largest["prefill_ms"]["median"] >= smallest["prefill_ms"]["median"]
    assert largest["model_bytes"] > smallest["model_bytes"]


def test_checkpoint_slices_equal_the_extracted_sub_network(small_checkpoint):
    subnet = SubnetConfig(2, (32, 96), layers=(1, 3))
    sliced = subnet_model(small_checkpoint, subnet, torch.float32, "checkpoint").state_dict()
    extracted = SuperNetwork.load(small_checkpoint).extract(subnet).state_dict()
    assert sliced.keys() == extracted.keys()
    for name, tensor in extracted.items():
        assert torch.equal(sliced[name], tensor), name


def test_interrupted_profile_resumes_without_loss_or_duplicates(capsys, tmp_path, small_checkpoint, small_space_file):
    out = tmp_path / "prof"
    args = profile_args(small_checkpoint, small_space_file, out, "--samples", "8", "--prompt-len", "16",
                        "--context-len", "16", "--gen-len", "8", "--repeats", "8", "--quiet")  # fmt: skip
    command = [sys.executable, "-m", "llamanas_deploy", *args]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    path = out / "measurements.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (path.is_file() and path.read_text().count("\n") >= 2):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = path.read_bytes()
    kept = before[: before.rfind(b"\n") + 1]
    assert 2 <= kept.count(b"\n") < 24, "the profile should have been killed mid-run"
    # a crash in the middle of a write leaves a line without its newline
    path.write_bytes(kept + b'{"schema_version": 1, "target": "test", "subn')
    code, _, err = run(capsys, *args)  # the same command again (in-process: one interpreter start saved)
    assert code == 0, err
    after = path.read_bytes()
    assert after.startswith(kept)  # nothing measured before the kill is lost or rewritten
    rows = records(out)
    assert len(rows) == 24 and len({(r["subnet_id"], r["visit"]) for r in rows}) == 24


def test_targets_lists_profiles(capsys, tmp_path, small_checkpoint, small_space_file):
    root = tmp_path / "profiles"
    assert run(capsys, *profile_args(small_checkpoint, small_space_file, root / "test", "--samples", "2", *FAST, *ONE_VISIT))[0] == 0
    code, stdout, _ = run(capsys, "targets", "--dir", str(root), "--json")
    assert code == 0
    (target,) = json.loads(stdout)["targets"]
    assert target["target"] == "test" and target["records"] == 2 and target["setups"] == {"torch/fp32/cpu": 2}
    code, stdout, _ = run(capsys, "targets", "--dir", str(root))
    assert code == 0 and "test" in stdout and "torch/fp32/cpu: 2" in stdout


# ---- bad input: exit 2, one line --------------------------------------------------------------
def test_settings_refuse_shapes_the_backend_cannot_run():
    with pytest.raises(BadInputError, match="backend llamacpp decodes one sequence: expected 1, got 2") as refused:
        ProfileSettings(backend="llamacpp", precision="q8_0", shapes=Shapes(batch_size=2))
    assert refused.value.param == "batch_size"
    assert ProfileSettings(shapes=Shapes(batch_size=2)).shapes.batch_size == 2  # torch runs any batch


def test_unknown_backend(capsys, tmp_path, small_checkpoint, small_space_file):
    result = run(capsys, *profile_args(small_checkpoint, small_space_file, tmp_path / "p", "--backend", "tvm"))
    assert_bad_input(result, "--backend", "'tvm'", "torch-compile")
    assert not (tmp_path / "p").exists()


def test_unavailable_backend(capsys, tmp_path, small_checkpoint, small_space_file):
    pytest.importorskip("torch")
    try:
        import intel_extension_for_pytorch  # noqa: F401

        pytest.skip("Intel Extension for PyTorch imports here")
    except Exception:
        pass
    result = run(capsys, *profile_args(small_checkpoint, small_space_file, tmp_path / "p", "--backend", "ipex"))
    assert_bad_input(result, "--backend: ipex", "does not import")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu(capsys, tmp_path, small_checkpoint, small_space_file):
    result = run(capsys, *profile_args(small_checkpoint, small_space_file, tmp_path / "p", "--device", "cuda"))
    assert_bad_input(result, "--device: cuda", "no CUDA GPU")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_profile(capsys, tmp_path, small_checkpoint, small_space_file):
    out = tmp_path / "prof"
    assert run(capsys, *profile_args(small_checkpoint, small_space_file, out, "--device", "cuda", "--samples", "2", *FAST))[0] == 0
    rows = records(out)
    assert all(r["device"] == "cuda" and r["prefill_ms"]["median"] > 0 and r["peak_mem_mib"] > 0 for r in rows)


def test_bad_space(capsys, tmp_path, small_checkpoint, small_space_file):
    assert_bad_input(run(capsys, *profile_args(small_checkpoint, tmp_path / "none.json", tmp_path / "p")), "none.json")
    # a space whose super-network is not this model
    assert_bad_input(run(capsys, *profile_args("tiny", small_space_file, tmp_path / "p")), "expects 4 layers")


def test_bad_option_values(capsys, tmp_path, small_checkpoint, small_space_file):
    base = profile_args(small_checkpoint, small_space_file, tmp_path / "p")
    assert_bad_input(run(capsys, *base, "--precision", "int3"), "--precision", "'int3'")
    assert_bad_input(run(capsys, *base, "--clock", "cpu", "--threads", "2"), "--clock: cpu", "threads 1")
    assert_bad_input(run(capsys, "profile", "--target", "../x"), "--target: '../x'")
    assert_bad_input(run(capsys, "targets", "--dir", str(tmp_path / "none")), "no such directory")
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text(json.dumps(SMALL_CONFIG))
    no_weights = profile_args(config_only, small_space_file, tmp_path / "p", "--weights", "checkpoint")
    assert_bad_input(run(capsys, *no_weights), "--weights: checkpoint", "no model.safetensors")


def test_fingerprint_mismatch(capsys, tmp_path, small_checkpoint, small_space_file):
    out = tmp_path / "prof"
    args = profile_args(small_checkpoint, small_space_file, out, "--samples", "1", *FAST, *ONE_VISIT)
    assert run(capsys, *args)[0] == 0
    stored = json.loads((out / "fingerprint.json").read_text())
    stored["fingerprint_id"] = "0123456789abcdef"
    stored["device"]["cpu_model"] = "Some Other CPU"
    (out / "fingerprint.json").write_text(json.dumps(stored))
    before = (out / "measurements.jsonl").read_bytes()
    assert_bad_input(run(capsys, *args, "--samples", "2"), "measured on another device", "Some Other CPU")
    assert (out / "measurements.jsonl").read_bytes() == before


# ---- the Python API -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"backend": "tvm"}, "backend"),
        ({"precision": "int3"}, "precision"),
        ({"precision": "int8"}, "precision"),  # the torch backend has no int8
        ({"device": "tpu"}, "device"),
        ({"backend": "ipex", "device": "cuda"}, "device"),
        ({"weights": "zeros"}, "weights"),
        ({"samples": 0}, "samples"),
        ({"threads": 0}, "threads"),
        ({"seed": 1.5}, "seed"),
        ({"clock": "sundial"}, "clock"),
        ({"clock": "cpu", "threads": 2}, "clock"),
        ({"shapes": {"prompt_len": 8}}, "shapes"),
    ],
)
def test_settings_refuse_bad_values_naming_the_parameter(kwargs, param):
    with pytest.raises(BadInputError) as err:
        ProfileSettings(**kwargs)
    assert err.value.param == param and "--" not in str(err.value), str(err.value)


def test_shapes_and_target_name_their_parameter(tmp_path, small_checkpoint, small_space_file):
    with pytest.raises(BadInputError) as err:
        Shapes(prompt_len=0)
    assert err.value.param == "prompt_len"
    with pytest.raises(BadInputError) as err:
        profile(small_checkpoint, small_space_file, target="../x", out=tmp_path / "p")
    assert err.value.param == "target" and not (tmp_path / "p").exists()


def test_profile_api_takes_a_loaded_super_network_and_reports_progress(tmp_path, small_checkpoint, small_space_file):
    supernet = SuperNetwork.load(small_checkpoint)
    settings = ProfileSettings(samples=2, shapes=Shapes(prompt_len=8, context_len=8, gen_len=4),
                               protocol=Protocol(warmup=1, repeats=3, visits=1))  # fmt: skip
    events = []
    out = tmp_path / "profiles" / "api"
    result = profile(supernet, load_space(small_space_file), settings, target="api", out=out, callback=events.append)
    assert isinstance(result, ProfileResult) and result.directory == out and result.settings == settings
    # the plan's 2 visits between the anchor's first and last
    assert [(e.stage, e.done, e.total, e.unit) for e in events] == [("profile", i, 4, "visit") for i in range(5)]
    assert events[0].status == "warming up" and events[-1].status.startswith("anchor ") and "decode" in events[-1].status
    summary = result.to_dict()
    assert (summary["out"], summary["measured_now"], summary["already_present"], summary["records"]) == (str(out), 2, 0, 2)
    rows = records(out)
    assert {r["model_id"] for r in rows} == {supernet.shape.id} and {r["weights"] for r in rows} == {"checkpoint"}
    # the same model by its path is the same measurement: nothing left to measure, no events
    events.clear()
    again = profile(str(small_checkpoint), str(small_space_file), settings, target="api", out=out, callback=events.append)
    assert (again.measured_now, again.records, again.anchors, events) == (0, 2, 2, [])
    (listed,) = list_targets(tmp_path / "profiles")
    assert (listed["target"], listed["records"], listed["setups"]) == ("api", 2, {"torch/fp32/cpu": 2})


@pytest.mark.parametrize("text, name", [("run-my run", "run-my-run"), ("run-a/b", "run-a-b"), ("..hidden", "hidden"),
                                        ("", "unnamed"), ("run-ok_1.2", "run-ok_1.2")])  # fmt: skip
def test_a_target_name_made_from_a_directory_name_is_always_valid(text, name):
    """`llamanas run --out "runs/my run"` profiles target run-my-run (the space once broke the run)."""
    from llamanas_deploy.profiler.runner import check_target_name, target_name_from

    assert target_name_from(text) == name == check_target_name(name)


def test_the_anchor_brackets_every_few_visits_and_a_resumed_profile_adds_its_own(capsys, tmp_path, small_checkpoint,
                                                                                small_space_file):  # fmt: skip
    out = tmp_path / "prof"
    space = load_space(small_space_file)
    args = profile_args(small_checkpoint, small_space_file, out, *FAST, *ONE_VISIT, "--anchor-every", "2")
    assert run(capsys, *args, "--samples", "3")[0] == 0
    rows = [json.loads(line) for line in (out / "measurements.jsonl").read_text().splitlines()]
    roles = ["A" if r.get("role") == "anchor" else "p" for r in rows]
    assert roles == ["A", "p", "p", "A", "p", "A"]
    anchors = records(out, "anchor")
    assert {r["subnet_id"] for r in anchors} == {space.anchor.id} and all(r["measure_s"] > 0 for r in rows)
    assert all(set(r["load"]) == {"others_cores", "steal_pct", "loadavg_1m", "cpu_mhz", "loaded"} for r in rows)
    code, stdout, _ = run(capsys, *args, "--samples", "4", "--json")  # one more sub-network: bracketed again
    summary = json.loads(stdout)
    assert code == 0 and (summary["measured_now"], summary["records"], summary["anchors"]) == (1, 4, 5)
    indices = [r["anchor_index"] for r in records(out, "anchor")]
    assert len(set(indices)) == 5 and records(out)[:3] == [r for r in rows if r.get("role") is None]
    assert run(capsys, *args, "--samples", "4", "--json")[0] == 0  # nothing to measure: no anchor either
    assert len(records(out, "anchor")) == 5


def test_anchor_every_zero_measures_the_plan_only(capsys, tmp_path, small_checkpoint, small_space_file):
    out = tmp_path / "prof"
    args = profile_args(small_checkpoint, small_space_file, out, *FAST, *ONE_VISIT, "--anchor-every", "0", "--samples", "2")
    assert run(capsys, *args)[0] == 0
    assert len(records(out)) == 2 and records(out, "anchor") == []


def test_pin_cpus_fixes_the_measuring_process_and_is_recorded(capsys, tmp_path, small_checkpoint, small_space_file):
    allowed = sorted(os.sched_getaffinity(0))
    out = tmp_path / "prof"
    args = profile_args(small_checkpoint, small_space_file, out, *FAST, *ONE_VISIT, "--samples", "1")
    try:
        assert run(capsys, *args, "--pin-cpus", str(allowed[-1]))[0] == 0
        assert os.sched_getaffinity(0) == {allowed[-1]}
    finally:
        pin_cpus(tuple(allowed))  # every thread of this process, as the profile pinned them
    assert {tuple(r["pinned_cpus"]) for r in records(out)} == {(allowed[-1],)}
    outside = str(max(allowed) + 1000)
    assert_bad_input(run(capsys, *profile_args(small_checkpoint, small_space_file, tmp_path / "p2", "--pin-cpus", outside)),
                     "--pin-cpus", outside)  # fmt: skip
    assert_bad_input(run(capsys, *profile_args(small_checkpoint, small_space_file, tmp_path / "p3", "--pin-cpus", "a,b")),
                     "--pin-cpus")  # fmt: skip
    assert not (tmp_path / "p2").exists() and not (tmp_path / "p3").exists()
