"""One-shot fine-tuning on a small real checkpoint: losses fall, neurons reorder, runs resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import make_checkpoint

from llamanas_deploy import corpus
from llamanas_deploy import finetuning as ft
from llamanas_deploy.cli import main
from llamanas_deploy.errors import BadInputError
from llamanas_deploy.evaluate import perplexity
from llamanas_deploy.model.importance import reorder_neurons_
from llamanas_deploy.model.supernet import SuperNetwork
from llamanas_deploy.space import load_space
from llamanas_deploy.subnet_config import SubnetConfig

SETTINGS = ft.FinetuneSettings(steps=12, batch_size=8, seq_len=32, lr=3e-3, seed=0)
SUBNET = SubnetConfig(2, (32, 64))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models gain nothing from more threads, and lose 10x when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    """The small test checkpoint with a 320-token byte-level BPE tokenizer beside it."""
    path = make_checkpoint(tmp_path_factory.mktemp("text") / "model", vocab_size=320)
    corpus.train_tokenizer(list(corpus.heldout_topics().values()), vocab_size=320).save(str(path / "tokenizer.json"))
    return path


@pytest.fixture(scope="module")
def space(small_space_file):
    return load_space(small_space_file)


def _losses(supernet, rows) -> tuple[float, float]:
    full = SubnetConfig(4, (128,) * 4)
    return perplexity(supernet, full, rows).value, perplexity(supernet, SUBNET, rows).value


@pytest.mark.parametrize("strategy, distill", [("paper", False), ("sandwich", True)])
def test_a_few_steps_lower_the_loss_of_full_and_subnetwork(text_model, space, strategy, distill):
    settings = replace(SETTINGS, strategy=strategy, distill=distill)
    torch.manual_seed(0)
    ids = ft.training_rows(text_model, ["pydoc-heldout"], "text", settings.seq_len)
    rows = ft.step_batch(ids, settings, 0)
    supernet = SuperNetwork.load(text_model)
    before = _losses(supernet, rows)
    optimizer = ft.make_optimizer(supernet.model.train(), settings)
    for step in range(settings.steps):
        losses = ft.train_step(supernet, space, ft.step_batch(ids, settings, step), optimizer, settings, step)
    after = _losses(supernet, rows)
    assert after[0] < 0.8 * before[0] and after[1] < 0.8 * before[1]
    assert set(losses) == {"step", "loss_full", "loss_sub"}


def test_sandwich_trains_the_smallest_and_paper_samples_from_the_space(space):
    sandwich = ft.FinetuneSettings(strategy="sandwich")
    assert ft.step_subnets(space, sandwich, 5)[0] == space.smallest
    sampled = {ft.step_subnets(space, SETTINGS, s)[0].id for s in range(30)}
    assert len(sampled) > 20
    assert all(space.validate(c) for s in range(30) for c in ft.step_subnets(space, SETTINGS, s))


def test_reordering_neurons_keeps_the_function_and_puts_important_neurons_first(text_model):
    ids = ft.training_rows(text_model, ["pydoc-heldout"], "text", 32)
    batches = [ft.step_batch(ids, SETTINGS, s) for s in range(2)]
    supernet = SuperNetwork.load(text_model)
    with torch.no_grad():
        before = supernet.model(input_ids=batches[0]).logits
    reorder_neurons_(supernet.model, batches)
    with torch.no_grad():
        assert torch.allclose(supernet.model(input_ids=batches[0]).logits, before, atol=1e-5)
    # a second pass finds every layer already sorted: the identity permutation
    weights = [layer.mlp.down_proj.weight.clone() for layer in supernet.model.model.layers]
    reorder_neurons_(supernet.model, batches)
    assert all(torch.equal(w, layer.mlp.down_proj.weight) for w, layer in zip(weights, supernet.model.model.layers))


def _cli_args(model: Path, space_file: Path, out: Path, steps: int) -> list[str]:
    return [
        "finetune", "--model", str(model), "--space", str(space_file), "--data", "pydoc-heldout", "--out", str(out),
        "--steps", str(steps), "--batch-size", "8", "--seq-len", "32", "--lr", "3e-3", "--save-every", "2",
        "--threads", "1",
    ]  # fmt: skip


def test_killed_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_one(text_model, small_space_file, tmp_path):
    out, steps = tmp_path / "killed", 30
    cmd = [sys.executable, "-m", "llamanas_deploy", *_cli_args(text_model, small_space_file, out, steps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = out / ft.CHECKPOINT_DIR / ft.POINTER
    while not pointer.exists() and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved_step = json.loads(pointer.read_text())["step"]
    assert 0 < saved_step < steps and not (out / ft.RECORD).exists()

    rerun = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"from step {saved_step}" in rerun.stderr
    record = json.loads((out / ft.RECORD).read_text())
    assert [h["step"] for h in record["history"]] == list(range(steps))
    assert not (out / ft.CHECKPOINT_DIR).exists()

    settings = ft.FinetuneSettings(steps=steps, batch_size=8, seq_len=32, lr=3e-3)
    ft.finetune(text_model, load_space(small_space_file), ["pydoc-heldout"], settings, out=tmp_path / "straight")
    resumed = SuperNetwork.load(out).model.state_dict()
    straight = SuperNetwork.load(tmp_path / "straight").model.state_dict()
    assert all(torch.allclose(resumed[k], straight[k], atol=1e-6) for k in straight)


def test_stopped_run_continues_in_process_exactly(text_model, space, tmp_path):
    settings = ft.FinetuneSettings(steps=6, batch_size=4, seq_len=32, lr=3e-3, strategy="sandwich", distill=True,
                                   save_every=2)  # fmt: skip
    first = ft.finetune(text_model, space, ["pydoc-heldout"], settings, out=tmp_path / "a", stop_after=3)
    assert first.status == "stopped" and first.steps == 3
    ft.finetune(text_model, space, ["pydoc-heldout"], settings, out=tmp_path / "a")
    ft.finetune(text_model, space, ["pydoc-heldout"], settings, out=tmp_path / "b")
    a = SuperNetwork.load(tmp_path / "a").weights_sha256()
    assert a == SuperNetwork.load(tmp_path / "b").weights_sha256()
    # rerunning a finished run changes nothing; other settings on the same --out are refused
    again = ft.finetune(text_model, space, ["pydoc-heldout"], settings, out=tmp_path / "a")
    assert again.status == "finished" and SuperNetwork.load(tmp_path / "a").weights_sha256() == a
    with pytest.raises(BadInputError, match="other settings .*lr"):
        ft.finetune(text_model, space, ["pydoc-heldout"], replace(settings, lr=1e-3), out=tmp_path / "a")


def test_output_is_a_checkpoint_transformers_loads_as_it_is(text_model, space, tmp_path):
    from transformers import AutoTokenizer, LlamaForCausalLM

    settings = ft.FinetuneSettings(steps=2, batch_size=4, seq_len=32, save_dtype="float16")
    ft.finetune(text_model, space, ["pydoc-heldout"], settings, out=tmp_path / "out")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32)
    ours = SuperNetwork.load(tmp_path / "out").model
    ids = torch.arange(40).view(2, 20)
    with torch.no_grad():
        assert torch.allclose(hf(input_ids=ids).logits, ours(input_ids=ids).logits, atol=1e-5)
    assert AutoTokenizer.from_pretrained(tmp_path / "out").decode([60, 61]) is not None


def test_non_empty_out_without_checkpoint_is_left_alone(text_model, space, tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(BadInputError, match="not empty and holds no checkpoint"):
        ft.finetune(text_model, space, ["pydoc-heldout"], SETTINGS, out=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    "name, content",
    [("bad.jsonl", '{"text": "fine"}\n{"txt": "oops"}\n'), ("bad.json", '{"not": "a list"}'), ("empty.txt", "")],
)
def test_bad_data_files_exit_2_with_one_line(text_model, small_space_file, tmp_path, capsys, name, content):
    (tmp_path / name).write_text(content)
    args = _cli_args(text_model, small_space_file, tmp_path / "out", 2)
    args[args.index("pydoc-heldout")] = str(tmp_path / name)
    with pytest.raises(SystemExit) as done:
        main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 1 and name in err[0]
    assert not (tmp_path / "out").exists()


def test_the_library_is_silent_and_reports_through_the_callback(text_model, space, tmp_path, capsys):
    events = []
    supernet = SuperNetwork.load(text_model)
    settings = ft.FinetuneSettings(steps=2, batch_size=4, seq_len=32, save_every=1)
    result = ft.finetune(supernet, space, ["pydoc-heldout"], settings, out=tmp_path / "run", callback=events.append)
    assert capsys.readouterr() == ("", "")
    assert [e.done for e in events if e.total] == [0, 1, 2] and "loss=" in events[-1].status
    assert result.to_dict()["run"]["model"] == str(text_model) and "history" not in result.to_dict()
    assert result.to_dict() == json.loads(json.dumps(result.to_dict()))
    again = ft.finetune(text_model, space, ["pydoc-heldout"], settings, out=tmp_path / "run", callback=events.append)
    assert again.to_dict() == result.to_dict() and events[-1].message.endswith("already finished")


def test_bad_settings_name_the_parameter_and_the_cli_its_flag(text_model, small_space_file, tmp_path, capsys):
    with pytest.raises(BadInputError) as err:
        ft.FinetuneSettings(strategy="nope")
    assert err.value.param == "strategy" and "--" not in str(err.value)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as done:
        main(_cli_args(text_model, small_space_file, tmp_path / "out", 2))
    assert done.value.code == 2 and capsys.readouterr().err.startswith("error: --out: ")


def test_activation_checkpointing_and_micro_batches_change_nothing_but_memory(text_model, space, tmp_path):
    settings = ft.FinetuneSettings(steps=2, batch_size=4, seq_len=32, lr=3e-3, compute_dtype="float32")
    variants = {"plain": settings, "recomputed": replace(settings, activation_checkpointing=True, micro_batch_size=2)}
    for name, variant in variants.items():
        ft.finetune(text_model, space, ["pydoc-heldout"], variant, out=tmp_path / name)
    plain, other = (SuperNetwork.load(tmp_path / name).model.state_dict() for name in variants)
    assert all(torch.allclose(plain[k], other[k], atol=1e-5) for k in plain)


def test_a_corrupted_checkpoint_shard_is_bad_input_naming_its_directory(text_model, small_space_file, space, tmp_path, capsys):
    """torch's CheckpointException derives from BaseException: it must still become one line and exit 2."""
    from conftest import run_cli

    out = tmp_path / "run"
    ft.finetune(text_model, space, ["pydoc-heldout"], replace(SETTINGS, save_every=2), out=out, stop_after=2)
    shards = sorted((out / ft.CHECKPOINT_DIR).rglob("*.safetensors"))
    assert shards
    shards[0].write_bytes(b"\x00" * 64)
    code, stdout, err = run_cli(capsys, *_cli_args(text_model, small_space_file, out, SETTINGS.steps))
    assert code == 2 and err.count("\n") == 1 and "cannot read checkpoint" in err and "Traceback" not in err, err
    assert str(shards[0].parent) in err and stdout == ""


def test_bf16_autocast_runs_the_forward_in_bf16_and_trains_like_float32(text_model, space):
    """Weights stay float32; the linear layers compute in bf16; two steps end near float32's."""
    settings = ft.FinetuneSettings(steps=2, batch_size=4, seq_len=32, lr=3e-3, distill=True, compute_dtype="float32")
    rows = ft.training_rows(text_model, ["pydoc-heldout"], "text", settings.seq_len)
    results = {}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        supernet = SuperNetwork.load(text_model)
        seen = set()
        supernet.model.lm_head.register_forward_hook(lambda module, args, out: seen.add(out.dtype))
        run = replace(settings, compute_dtype=dtype)
        optimizer = ft.make_optimizer(supernet.model, run)
        losses = [ft.train_step(supernet, space, ft.step_batch(rows, run, step), optimizer, run, step) for step in range(2)]
        assert seen == {getattr(torch, dtype)} and next(supernet.model.parameters()).dtype == torch.float32
        results[dtype] = (losses, supernet.model.state_dict())
    (loss32, weights32), (loss16, weights16) = results["float32"], results["bfloat16"]
    for a, b in zip(loss32, loss16):
        assert b["loss_full"] == pytest.approx(a["loss_full"], rel=0.02)
        assert b["loss_sub"] == pytest.approx(a["loss_sub"], rel=0.1)
    start = SuperNetwork.load(text_model).model.state_dict()
    update32, update16 = (torch.cat([(w[k] - start[k]).flatten() for k in start]).double() for w in (weights32, weights16))
    assert float(update32 @ update16 / (update32.norm() * update16.norm())) > 0.95  # Adam moved the weights alike (0.998 here)


@pytest.mark.parametrize(("flags", "expected"), [(["avx2", "fma"], "float32"), (["avx512f", "avx512_bf16"], "bfloat16"),
                                                 (["amx_tile", "amx_bf16"], "bfloat16")])  # fmt: skip
def test_auto_compute_dtype_is_bf16_where_the_cpu_multiplies_it(monkeypatch, flags, expected):
    from llamanas_deploy.profiler import fingerprint

    monkeypatch.setattr(fingerprint, "cpu_isa_flags", lambda: flags)
    assert ft.FinetuneSettings().compute_dtype == expected
    assert ft.FinetuneSettings(compute_dtype="float32").compute_dtype == "float32"
    with pytest.raises(BadInputError, match="compute_dtype"):
        ft.FinetuneSettings(compute_dtype="float16")


def test_a_run_recorded_before_compute_dtype_existed_resumes_in_float32(tmp_path):
    run = {"model": "m", "steps": 3, "compute_dtype": "float32"}
    ft.check_same_run({"model": "m", "steps": 3}, run, tmp_path / "training.json")
    with pytest.raises(BadInputError, match="compute_dtype"):
        ft.check_same_run({"model": "m", "steps": 3}, run | {"compute_dtype": "bfloat16"}, tmp_path / "training.json")
