"""One-shot super-network fine-tuning: train once so that every sub-network of the space works.

Strategies (each step is one optimizer update on the summed gradients of its passes):

- `paper` (LLaMA-NAS / InstaTune without distillation): the full network, then one sub-network
  sampled uniformly from the space, on the same batch;
- `sandwich` (BigNAS): the full network, the smallest sub-network and one random one;
- `full`: the full network only (standard training, the baseline the benchmark compares with).

With `distill`, sub-networks learn from the full network's (detached) next-token distribution
instead of the labels (in-place distillation). With `reorder_neurons`, each MLP's neurons are
permuted once, before training, by importance on a few training batches, so that "keep the
first s neurons" keeps the most important ones (the network's function is unchanged).

Everything random derives from `(seed, step)`: the data order, the sub-network sampled at each
step. A checkpoint (model, optimizer, torch RNG, step) is saved atomically every `save_every`
steps in `OUT/checkpoint/`; the same call after a crash resumes from it. The result is a plain
Hugging Face checkpoint directory (`config.json`, `model.safetensors`, tokenizer files).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from .errors import BadInputError, LlamanasError
from .jsonfiles import read_json
from .progress import Callback, report
from .space import SearchSpace
from .subnet_config import SubnetConfig

STRATEGIES = ("paper", "sandwich", "full")
CHECKPOINT_DIR = "checkpoint"
POINTER = "checkpoint.json"
RECORD = "training.json"
SAVE_DTYPES = ("float32", "float16", "bfloat16")
RUNTIME_FIELDS = ("save_every",)  # how the run is carried out, not what it computes


@dataclass(frozen=True)
class FinetuneSettings:
    """Everything that determines the result (a resumed run must have the same), and how often to save."""

    steps: int = 300
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 1e-5
    min_lr_ratio: float = 0.1
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    strategy: str = "paper"
    distill: bool = False
    reorder_neurons: bool = False
    from_scratch: bool = False
    seed: int = 0
    save_dtype: str = "float32"
    save_every: int = 25

    def __post_init__(self) -> None:
        for name, choices in (("strategy", STRATEGIES), ("save_dtype", SAVE_DTYPES)):
            if getattr(self, name) not in choices:
                raise BadInputError(f"{getattr(self, name)!r} is not one of {list(choices)}", param=name)
        for name in ("steps", "batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise BadInputError(f"{getattr(self, name)} is not >= 1", param=name)
        if self.seq_len < 2:
            raise BadInputError(f"{self.seq_len} is not >= 2", param="seq_len")
        if self.lr <= 0:
            raise BadInputError(f"{self.lr} is not > 0", param="lr")

    def identity(self) -> dict[str, Any]:
        """The fields a resumed run must share with the run it continues."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in RUNTIME_FIELDS}


@dataclass
class RunState:
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class FinetuneResult:
    """A run's outcome: `finished` (the checkpoint is in `out`) or `stopped` (resumable)."""

    out: Path
    status: str
    steps: int
    run: dict[str, Any]
    history: list[dict[str, float]]

    @property
    def final_loss_full(self) -> float | None:
        return _mean(h["loss_full"] for h in self.history[-20:])

    @property
    def final_loss_sub(self) -> float | None:
        return _mean(h["loss_sub"] for h in self.history[-20:] if "loss_sub" in h)

    def record(self) -> dict[str, Any]:
        """The content of `training.json`."""
        return {
            "schema_version": 1,
            "status": self.status,
            "run": self.run,
            "steps": self.steps,
            "final_loss_full": self.final_loss_full,
            "final_loss_sub": self.final_loss_sub,
            "history": self.history,
        }

    def to_dict(self) -> dict[str, Any]:
        """What `llamanas finetune --json` prints: the record without the history, and the directory."""
        return {k: v for k, v in self.record().items() if k != "history"} | {"out": str(self.out)}

    @classmethod
    def from_record(cls, out: Path, record: dict[str, Any]) -> "FinetuneResult":
        return cls(out, record["status"], record["steps"], record["run"], record["history"])


# ---- the public entry point -----------------------------------------------------------------


def finetune(
    model,
    space: SearchSpace,
    data: Sequence[str],
    out: str | Path,
    settings: FinetuneSettings = FinetuneSettings(),
    *,
    text_field: str = "text",
    callback: Callback = None,
    stop_after: int | None = None,
) -> FinetuneResult:
    """Fine-tune `model` (a `SuperNetwork`, trained in place, or a checkpoint dir / built-in name) on `data`.

    The finished run is a checkpoint directory in `out`; the same call after a crash resumes.
    `stop_after` ends the call after that many steps of this call (the run stays resumable).
    """
    import torch

    out = Path(out)
    source = _source(model)
    run = {"model": str(source), "space_id": space.id, "data": list(data), "text_field": text_field}
    run |= settings.identity()
    finished = _finished_record(out, run, callback)
    if finished is not None:
        return finished
    torch.manual_seed(settings.seed)
    rows = training_rows(source, data, text_field, settings.seq_len)
    supernet = _load_supernet(model, space, settings)
    optimizer = make_optimizer(supernet.model, settings)
    state = _resume(out, run, supernet.model, optimizer, callback)
    if state.step == 0 and settings.reorder_neurons:
        reorder_neurons_(supernet.model, [_batch(rows, settings, s) for s in range(4)])
    state = _train(supernet, space, rows, optimizer, settings, state, out, run, stop_after, callback)
    if state.step < settings.steps:
        return FinetuneResult(out, "stopped", state.step, run, state.history)
    return _save_final(supernet, source, out, run, state)


def _source(model) -> Path | str:
    """Where the model comes from: a loaded super-network's directory, else the name or path given."""
    return getattr(model, "source", model)


def training_rows(model: str | Path, data: Sequence[str], text_field: str, seq_len: int):
    """The token stream of all data files (a 1-D tensor), documents separated by the eos token."""
    import torch

    from .data import load_tokenizer, read_texts, tokenize

    tokenizer = load_tokenizer(model)
    eos = tokenizer.token_to_id("</s>")
    ids: list[int] = []
    for source in data:
        ids += tokenize(read_texts(source, text_field), tokenizer, eos)
    if len(ids) < 2 * seq_len:
        raise BadInputError(f"{', '.join(data)}: {len(ids)} tokens, fewer than two sequences of {seq_len}", param="data")
    return torch.tensor(ids, dtype=torch.long)


def _load_supernet(model, space: SearchSpace, settings: FinetuneSettings):
    from .model.supernet import SuperNetwork

    if settings.from_scratch:
        supernet = SuperNetwork.random(_source(model), settings.seed)
    else:
        supernet = model if isinstance(model, SuperNetwork) else SuperNetwork.load(model)
    supernet.check_space(space)
    supernet.model.train()
    return supernet


def make_optimizer(model, settings: FinetuneSettings):
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.95))


def learning_rate(step: int, settings: FinetuneSettings) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio * lr`."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    floor = settings.min_lr_ratio
    return settings.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# ---- data order and sub-network sampling (functions of seed and step) -----------------------


def _batch(ids, settings: FinetuneSettings, step: int):
    """Rows of `seq_len + 1` tokens: each epoch shifts the chunk boundaries and shuffles the rows."""
    import torch

    span = settings.seq_len + 1
    rows_per_epoch = (len(ids) - span) // span
    per_epoch = max(1, rows_per_epoch // settings.batch_size)
    epoch, index = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
    offset = int(torch.randint(span, (1,), generator=gen))
    order = torch.randperm(rows_per_epoch, generator=gen)
    picks = order[(index * settings.batch_size + torch.arange(settings.batch_size)) % rows_per_epoch]
    stream = ids[offset : offset + rows_per_epoch * span].view(-1, span)
    return stream[picks]


def step_subnets(space: SearchSpace, settings: FinetuneSettings, step: int) -> list[SubnetConfig]:
    """The sub-networks trained after the full network at `step`."""
    if settings.strategy == "full":
        return []
    sampled = space.sample_random(1, seed=settings.seed * 1_000_003 + step)[0]
    return [space.smallest, sampled] if settings.strategy == "sandwich" else [sampled]


# ---- one step -------------------------------------------------------------------------------


def train_step(supernet, space: SearchSpace, batch, optimizer, settings: FinetuneSettings, step: int) -> dict[str, float]:
    """Full network + the step's sub-networks on one batch; one optimizer update. Returns losses."""
    import torch

    inputs, targets = batch[:, :-1], batch[:, 1:]
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, settings)
    logits = supernet.model(input_ids=inputs, use_cache=False).logits
    full_loss = _cross_entropy(logits, targets)
    full_loss.backward()
    teacher = logits.detach().log_softmax(-1) if settings.distill else None
    del logits
    sub_losses = []
    for subnet in step_subnets(space, settings, step):
        with supernet.activate(subnet) as model:
            sub_logits = model(input_ids=inputs, use_cache=False).logits
            loss = _cross_entropy(sub_logits, targets) if teacher is None else _distill(sub_logits, teacher)
            loss.backward()
        sub_losses.append(loss.item())
    torch.nn.utils.clip_grad_norm_(supernet.model.parameters(), settings.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    losses = {"step": step, "loss_full": full_loss.item()}
    return losses | ({"loss_sub": sum(sub_losses) / len(sub_losses)} if sub_losses else {})


def _cross_entropy(logits, targets):
    import torch.nn.functional as F

    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def _distill(student_logits, teacher_logprobs):
    """KL(teacher || student) per token: the full network's distribution as soft labels."""
    import torch.nn.functional as F

    student = student_logits.float().log_softmax(-1).reshape(-1, student_logits.shape[-1])
    teacher = teacher_logprobs.reshape(-1, teacher_logprobs.shape[-1])
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


# ---- neuron reordering ----------------------------------------------------------------------


def reorder_neurons_(model, batches: Sequence) -> None:
    """Permute each MLP's neurons by importance, most important first; the function is unchanged.

    Importance of neuron j: mean |act(gate_j(x)) * up_j(x)| over the batches' tokens times the
    norm of its output column `down_proj[:, j]`.
    """
    import torch

    layers = model.model.layers
    sums = [torch.zeros(layer.mlp.down_proj.in_features) for layer in layers]
    hooks = [
        layer.mlp.down_proj.register_forward_pre_hook(_accumulate(sums[i])) for i, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            for batch in batches:
                model(input_ids=batch[:, :-1], use_cache=False)
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        for layer, total in zip(layers, sums):
            mlp = layer.mlp
            order = torch.argsort(total * mlp.down_proj.weight.norm(dim=0), descending=True)
            for proj in (mlp.gate_proj, mlp.up_proj):
                proj.weight.copy_(proj.weight[order])
                if proj.bias is not None:
                    proj.bias.copy_(proj.bias[order])
            mlp.down_proj.weight.copy_(mlp.down_proj.weight[:, order])


def _accumulate(total):
    def hook(_module, args):
        total.add_(args[0].detach().abs().reshape(-1, args[0].shape[-1]).sum(0))

    return hook


# ---- the loop -------------------------------------------------------------------------------


def _train(supernet, space, ids, optimizer, settings, state: RunState, out: Path, run, stop_after, callback):
    tokens_per_step = settings.batch_size * settings.seq_len
    end = settings.steps if stop_after is None else min(settings.steps, state.step + stop_after)
    start_time, start_step = time.perf_counter(), state.step
    report(callback, "finetune", state.step, settings.steps, "step")
    while state.step < end:
        losses = train_step(supernet, space, _batch(ids, settings, state.step), optimizer, settings, state.step)
        if not all(math.isfinite(v) for v in losses.values()):
            raise LlamanasError(f"step {state.step}: the loss is not finite ({losses}); try a lower learning rate")
        state.history.append(losses)
        state.step += 1
        rate = (state.step - start_step) * tokens_per_step / (time.perf_counter() - start_time)
        sub = f" sub={losses['loss_sub']:.3f}" if "loss_sub" in losses else ""
        status = f"loss={losses['loss_full']:.3f}{sub} tok/s={rate:.0f}"
        if state.step % settings.save_every == 0 or state.step == end:
            save_checkpoint(out, supernet.model, optimizer, state, run)
        report(callback, "finetune", state.step, settings.steps, "step", status=status)
    return state


# ---- checkpoints ----------------------------------------------------------------------------


def save_checkpoint(out: Path, model, optimizer, state: RunState, run: dict) -> None:
    """Model, optimizer, RNG and step: tensors in safetensors, the rest in JSON; the pointer file
    is replaced last, so a crash at any moment leaves the previous checkpoint intact."""
    import torch
    from safetensors.torch import save_file

    from .jsonfiles import write_json
    from .model.build import tied_weight_keys

    ckpt = out / CHECKPOINT_DIR
    ckpt.mkdir(parents=True, exist_ok=True)
    tied = tied_weight_keys(model)
    tensors = {f"model/{k}": v.detach().contiguous() for k, v in model.state_dict().items() if k not in tied}
    optim = optimizer.state_dict()
    for index, slots in optim["state"].items():
        for name, value in slots.items():
            tensors[f"optim/{index}/{name}"] = torch.as_tensor(value).contiguous()
    tensors["rng/torch"] = torch.get_rng_state()
    name = f"state-{state.step:07d}.safetensors"
    save_file(tensors, str(ckpt / f".{name}.tmp"))
    os.replace(ckpt / f".{name}.tmp", ckpt / name)
    groups = [{k: v for k, v in g.items() if k != "params"} | {"params": g["params"]} for g in optim["param_groups"]]
    pointer = {"schema_version": 1, "step": state.step, "file": name, "run": run, "param_groups": groups}
    pointer["history"] = state.history
    write_json(ckpt / POINTER, pointer, indent=None)
    for old in ckpt.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink()


def _resume(out: Path, run: dict, model, optimizer, callback: Callback) -> RunState:
    """The checkpoint's state loaded into `model` and `optimizer`, or a fresh state."""
    pointer_file = out / CHECKPOINT_DIR / POINTER
    if not pointer_file.is_file():
        # a run killed before its first checkpoint leaves only an empty or partial checkpoint dir
        if out.exists() and any(p.name != CHECKPOINT_DIR for p in out.iterdir()):
            raise BadInputError(f"{out}: directory exists, is not empty and holds no checkpoint; refusing to overwrite it",
                                param="out")  # fmt: skip
        return RunState()
    pointer = read_json(pointer_file, "checkpoint pointer")
    _check_same_run(pointer.get("run", {}), run, pointer_file)
    _load_tensors(out / CHECKPOINT_DIR / pointer["file"], pointer, model, optimizer)
    report(callback, "finetune", message=f"resuming {out} from step {pointer['step']}")
    return RunState(step=pointer["step"], history=pointer["history"])


def _load_tensors(file: Path, pointer: dict, model, optimizer) -> None:
    import torch
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(file))
    except Exception as err:  # safetensors' own error types for a corrupt file
        raise BadInputError(f"{file}: cannot read checkpoint ({err})") from None
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, strict=False)
    model.tie_weights()
    slots: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/")
            slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": pointer["param_groups"]})
    torch.set_rng_state(tensors["rng/torch"])


def _check_same_run(saved: dict, run: dict, source: Path) -> None:
    changed = sorted(k for k in set(saved) | set(run) if saved.get(k) != run.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {run.get(k)!r}" for k in changed[:3])
        raise BadInputError(f"{source}: this run was started with other settings ({diffs}); use a new directory",
                            param="out")  # fmt: skip


def _finished_record(out: Path, run: dict, callback: Callback) -> FinetuneResult | None:
    record_file = out / RECORD
    if not record_file.is_file():
        return None
    record = read_json(record_file, "training record")
    _check_same_run(record.get("run", {}), run, record_file)
    report(callback, "finetune", message=f"{out}: this run already finished")
    return FinetuneResult.from_record(out, record)


# ---- the result -----------------------------------------------------------------------------


def _save_final(supernet, source, out: Path, run: dict, state: RunState) -> FinetuneResult:
    """config.json, model.safetensors, tokenizer files and training.json; then drop the checkpoint."""
    from .concepts import TOKENIZER_FILES
    from .jsonfiles import write_json
    from .model.build import save_model
    from .model.families import resolve_model_path

    source_dir = resolve_model_path(source)
    source_dir = source_dir if source_dir.is_dir() else source_dir.parent
    save_model(supernet.model, out, dtype=run["save_dtype"])
    for name in TOKENIZER_FILES:
        if (source_dir / name).is_file() and source_dir.resolve() != out.resolve():
            shutil.copyfile(source_dir / name, out / f".{name}.tmp")
            os.replace(out / f".{name}.tmp", out / name)
    result = FinetuneResult(out, "finished", state.step, run, state.history)
    write_json(out / RECORD, result.record(), indent=1)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    return result


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None
