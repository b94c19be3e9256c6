"""Fine-tuning in 2 processes (torchrun, FSDP2, gloo on CPU) trains exactly as in 1, and resumes after a kill.

Run by pytest; torchrun also runs this file as a script (`_gradient_worker`) for the gradient test.
"""

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
from conftest import make_checkpoint

from llamanas_deploy import corpus
from llamanas_deploy import finetuning as ft
from llamanas_deploy.distributed import torchrun_command
from llamanas_deploy.space import load_space
from llamanas_deploy.subnet_config import SubnetConfig

STEPS = 8
# float32: processes and micro-batches add up to the same numbers only when nothing rounds to bf16
ARGS = ["--data", "pydoc-heldout", "--steps", str(STEPS), "--batch-size", "8", "--seq-len", "32", "--lr", "3e-3",
        "--compute-dtype", "float32",
        "--save-every", "2", "--quiet", "--json"]  # fmt: skip
SUBNET = SubnetConfig(3, (32, 64, 96))
ENV = os.environ | {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    """The small test model with tied embeddings (shared by FSDP2's root unit) and a 320-token tokenizer."""
    path = make_checkpoint(tmp_path_factory.mktemp("text") / "model", vocab_size=320, tie_word_embeddings=True)
    corpus.train_tokenizer(list(corpus.heldout_topics().values()), vocab_size=320).save(str(path / "tokenizer.json"))
    return path


@pytest.fixture(scope="module")
def one_process(text_model, small_space_file, tmp_path_factory) -> Path:
    """The reference: the same run in this process, no process group."""
    torch.set_num_threads(1)
    settings = ft.FinetuneSettings(steps=STEPS, batch_size=8, seq_len=32, lr=3e-3, save_every=2, compute_dtype="float32")
    out = tmp_path_factory.mktemp("one") / "run"
    ft.finetune(text_model, load_space(small_space_file), ["pydoc-heldout"], settings, out=out)
    return out


def _command(text_model: Path, space: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", "--model", str(text_model), "--space", str(space), "--out", str(out), *ARGS, *extra]


def _assert_same_training(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    history = [json.loads((run / ft.RECORD).read_text())["history"] for run in (a, b)]
    assert [h["step"] for h in history[1]] == list(range(STEPS))
    for x, y in zip(*history):
        assert x["loss_full"] == pytest.approx(y["loss_full"], rel=1e-5)
        assert x["loss_sub"] == pytest.approx(y["loss_sub"], rel=1e-5)
    weights = [load_file(str(run / "model.safetensors")) for run in (a, b)]
    assert sorted(weights[0]) == sorted(weights[1])
    assert all(torch.allclose(weights[0][k], weights[1][k], atol=1e-4) for k in weights[0])


def test_two_processes_with_accumulation_train_like_one(text_model, small_space_file, one_process, tmp_path):
    out = tmp_path / "two"
    # 8 rows: 4 per process, in micro-batches of 2
    cmd = torchrun_command(2, _command(text_model, small_space_file, out, "--micro-batch-size", "2"))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.strip().splitlines()) == 1  # the result, from rank 0 only
    assert json.loads(done.stdout)["status"] == "finished"
    _assert_same_training(one_process, out)
    assert not (out / ft.CHECKPOINT_DIR).exists()


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
    for pid in children:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


def test_killing_one_rank_then_rerunning_resumes(text_model, small_space_file, one_process, tmp_path):
    out = tmp_path / "killed"
    args = _command(text_model, small_space_file, out)
    launcher = subprocess.Popen(torchrun_command(2, args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=ENV)  # fmt: skip
    pointer = out / ft.CHECKPOINT_DIR / ft.POINTER
    while not pointer.exists() and launcher.poll() is None:
        time.sleep(0.02)
    os.kill(_rank_pid(launcher, 1), signal.SIGKILL)
    assert launcher.wait(timeout=120) != 0
    saved = json.loads(pointer.read_text())
    assert 0 < saved["step"] < STEPS and saved["processes"] == 2 and not (out / ft.RECORD).exists()

    # the same command again, through `llamanas finetune --nproc-per-node 2`
    cmd = [sys.executable, "-m", "llamanas_deploy", *args, "--nproc-per-node", "2"]
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"from step {saved['step']}" in rerun.stderr
    _assert_same_training(one_process, out)


def test_inconsistent_launch_is_one_line_and_exit_2(text_model, small_space_file, tmp_path):
    cmd = [sys.executable, "-m", "llamanas_deploy", *_command(text_model, small_space_file, tmp_path / "x"),
           "--nproc-per-node", "3"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=ENV)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: --batch-size: global batch 8 is not divisible by the 3 processes launched"
    ]
    assert not (tmp_path / "x").exists()


def test_sliced_sub_network_gradients_on_sharded_parameters_equal_unsharded_ones(text_model, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", __file__,
           str(text_model), str(tmp_path / "grads.json")]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "grads.json").read_text())
    assert result["compared"] == result["parameters"] > 0
    assert result["max_abs_diff"] < 1e-6 and result["max_abs_grad"] > 1e-3
    assert result["dropped_neurons_grad"] == 0.0  # neurons past the kept width get no gradient


def _gradient_worker(model_dir: str, out: str) -> None:
    """Under torchrun: one sub-network pass through the FSDP2-sharded model (each rank half the batch)
    and through a plain copy (the whole batch); rank 0 writes how far the gradients differ."""
    import torch.nn.functional as F

    from llamanas_deploy.distributed import prepare, world
    from llamanas_deploy.model.supernet import SuperNetwork

    torch.manual_seed(0)
    rows = torch.randint(0, 320, (4, 17))
    with world("cpu") as w:
        plain, sharded = SuperNetwork.load(model_dir), SuperNetwork.load(model_dir)
        sharded.model = prepare(sharded.model, w)
        for net, batch in ((plain, rows), (sharded, w.shard(rows))):
            with net.activate(SUBNET) as model:
                logits = model(input_ids=batch[:, :-1], use_cache=False).logits
                F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)).backward()
        reference = dict(plain.model.named_parameters())
        diffs, compared = [], 0
        for name, param in sharded.model.named_parameters():
            grad = torch.zeros_like(reference[name]) if param.grad is None else param.grad.full_tensor()
            expected = torch.zeros_like(grad) if reference[name].grad is None else reference[name].grad
            diffs.append((grad - expected).abs().max().item())
            compared += 1
        up = sharded.model.model.layers[0].mlp.up_proj.weight.grad.full_tensor()
        result = {"parameters": len(reference), "compared": compared, "max_abs_diff": max(diffs),
                  "max_abs_grad": max(p.grad.abs().max().item() for p in reference.values() if p.grad is not None),
                  "dropped_neurons_grad": up[SUBNET.intermediate_sizes[0]:].abs().max().item()}  # fmt: skip
        if w.main:
            Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
    _gradient_worker(*sys.argv[1:])
