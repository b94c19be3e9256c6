"""One-shot super-network fine-tuning: train once so that every sub-network of the space works.

Strategies (each step is one optimizer update on the summed gradients of its passes):

- `paper` (LLaMA-NAS / InstaTune without distillation): the full network, then one sub-network
  sampled uniformly from the space, on the same batch;
- `sandwich` (BigNAS): the full network, the smallest sub-network and one random one;
- `full`: the full network only (standard training, the baseline the benchmark compares with).

`compute_dtype` "bfloat16" runs the forward passes under bf16 autocast (weights, optimizer state and
losses stay float32); "auto" picks it where the hardware multiplies bf16 natively (`default_compute_dtype`).

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

from .concepts import DEVICES
from .errors import BadInputError, LlamanasError
from .jsonfiles import read_json
from .progress import Callback, report
from .space import SearchSpace
from .subnet_config import SubnetConfig

STRATEGIES = ("paper", "sandwich", "full")
CHECKPOINT_DIR = "checkpoint"
POINTER = "checkpoint.json"
CHECKPOINT_SCHEMA = 2  # 2: a directory of torch.distributed.checkpoint shards (1: one safetensors file)
RECORD = "training.json"
SAVE_DTYPES = ("float32", "float16", "bfloat16")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # CPUs whose matrix units take bf16 natively
RUNTIME_FIELDS = ("save_every", "micro_batch_size", "activation_checkpointing", "device")  # how, not what


def default_compute_dtype(device: str) -> str:
    """"bfloat16" where the hardware multiplies it natively (AMX / AVX512-BF16 CPUs, CUDA GPUs that
    support it), else "float32"."""
    if device == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    from .profiler.fingerprint import cpu_isa_flags

    return "bfloat16" if set(FAST_BF16_CPU_FLAGS) & set(cpu_isa_flags()) else "float32"


@dataclass(frozen=True)
class FinetuneSettings:
    """Everything that determines the result (a resumed run must have the same), then how it is carried out.

    `batch_size` is the global batch: under torchrun each of N processes trains `batch_size / N` rows,
    in parts of `micro_batch_size` rows (gradient accumulation; default: all its rows at once).
    """

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
    micro_batch_size: int | None = None
    activation_checkpointing: bool = False
    device: str = "cpu"
    compute_dtype: str = "auto"

    def __post_init__(self) -> None:
        choices_of = (("strategy", STRATEGIES), ("save_dtype", SAVE_DTYPES), ("device", DEVICES), ("compute_dtype", COMPUTE_DTYPES))
        for name, choices in choices_of:
            if getattr(self, name) not in choices:
                raise BadInputError(f"{getattr(self, name)!r} is not one of {list(choices)}", param=name)
        if self.compute_dtype == "auto":  # resolved here, so that a resumed run compares what was used
            object.__setattr__(self, "compute_dtype", default_compute_dtype(self.device))
        for name in ("steps", "batch_size", "save_every", "micro_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
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
    Under torchrun, every process makes this call: the model is sharded with FSDP2, and only
    rank 0 reports progress and writes files besides its checkpoint shards.
    `stop_after` ends the call after that many steps of this call (the run stays resumable).
    """
    from . import distributed

    out = Path(out)
    source = _source(model)
    run = {"model": str(source), "space_id": space.id, "data": list(data), "text_field": text_field}
    run |= settings.identity()
    with distributed.world(settings.device) as world:
        callback = callback if world.main else None
        micro_batches = distributed.check_batch(settings.batch_size, settings.micro_batch_size, world.size)
        finished = _finished_record(out, run, callback)
        if finished is not None:
            return finished
        trainer = _Trainer(space, settings, world, micro_batches, out, run, callback)
        state = trainer.start(model, training_rows(source, data, text_field, settings.seq_len))
        state = trainer.train(state, stop_after)
        if state.step < settings.steps:
            return FinetuneResult(out, "stopped", state.step, run, state.history)
        return trainer.save_final(source, state)


def _source(model) -> Path | str:
    """Where the model comes from: a loaded super-network's directory, else the name or path given."""
    return getattr(model, "source", model)


def training_rows(model: str | Path, data: Sequence[str], text_field: str, seq_len: int):
    """The token stream of all data files (a 1-D tensor), documents separated by the eos token."""
    import torch

    from .data import load_tokenizer, read_texts, tokenize
    from .model.families import read_config_dict

    tokenizer = load_tokenizer(model)
    eos = read_config_dict(model)[0].get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos  # documents end with the model's own eos token
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


def train_step(
    supernet, space: SearchSpace, batch, optimizer, settings: FinetuneSettings, step: int, world=None,
    micro_batches: int = 1,
) -> dict[str, float]:  # fmt: skip
    """One optimizer update on the global `batch`: the full network and the step's sub-networks.

    This process trains its shard of the batch (all of it in a single process), in `micro_batches`
    parts whose gradients add up (FSDP2 averages them over processes). Returns the losses, averaged
    over the whole batch.
    """
    import torch

    from .distributed import World

    world = world or World()
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, settings)
    subnets = step_subnets(space, settings, step)
    losses = {"loss_full": 0.0} | ({"loss_sub": 0.0} if subnets else {})
    for rows in world.shard(batch).to(world.device).chunk(micro_batches):
        full, subs = _backward(supernet, subnets, rows, settings, 1 / micro_batches)
        losses["loss_full"] += full / micro_batches
        if subs:
            losses["loss_sub"] += sum(subs) / len(subs) / micro_batches
    torch.nn.utils.clip_grad_norm_(supernet.model.parameters(), settings.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {"step": step} | world.mean(losses)


def _autocast(settings: FinetuneSettings):
    import torch

    device = "cuda" if settings.device == "cuda" else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16, enabled=settings.compute_dtype == "bfloat16")


def _backward(supernet, subnets: list[SubnetConfig], rows, settings: FinetuneSettings, scale: float):
    """Gradients of the full network and of each sub-network on `rows` (losses times `scale`); their losses."""
    inputs, targets = rows[:, :-1], rows[:, 1:]
    with _autocast(settings):
        logits = supernet.model(input_ids=inputs, use_cache=False).logits
    full_loss = _cross_entropy(logits, targets)
    (full_loss * scale).backward()
    teacher = logits.detach().float().log_softmax(-1) if settings.distill else None
    del logits
    sub_losses = []
    for subnet in subnets:
        with supernet.activate(subnet) as model:
            with _autocast(settings):  # the forward pass only; losses and backward as the forward left them
                sub_logits = model(input_ids=inputs, use_cache=False).logits
            loss = _cross_entropy(sub_logits, targets) if teacher is None else _distill(sub_logits, teacher)
            (loss * scale).backward()
        sub_losses.append(loss.item())
    return full_loss.item(), sub_losses


def _cross_entropy(logits, targets):
    import torch.nn.functional as F

    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def _distill(student_logits, teacher_logprobs):
    """KL(teacher || student) per token: the full network's distribution as soft labels."""
    import torch.nn.functional as F

    student = student_logits.float().log_softmax(-1).reshape(-1, student_logits.shape[-1])
    teacher = teacher_logprobs.reshape(-1, teacher_logprobs.shape[-1])
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean")


# ---- the run: start or resume, train, save ----------------------------------------------------


class _Trainer:
    """One run in one process: its model, optimizer and world; checkpoints in `out/checkpoint/`."""

    def __init__(self, space: SearchSpace, settings: FinetuneSettings, world, micro_batches: int, out: Path,
                 run: dict, callback: Callback):  # fmt: skip
        self.space, self.settings, self.world, self.micro_batches = space, settings, world, micro_batches
        self.out, self.run, self.callback = out, run, callback
        self.ckpt = out / CHECKPOINT_DIR

    def start(self, model, ids) -> RunState:
        """Load (and on a fresh run reorder) the super-network, shard it, and resume from the checkpoint if any."""
        import torch

        from .distributed import load_state, prepare
        from .model.build import tied_weight_keys
        from .model.importance import reorder_neurons_

        torch.manual_seed(self.settings.seed)
        self.ids = ids
        self.supernet = _load_supernet(model, self.space, self.settings)
        pointer = self._pointer()
        if pointer is None and self.settings.reorder_neurons:
            reorder_neurons_(self.supernet.model, [_batch(ids, self.settings, s)[:, :-1] for s in range(4)])
        self.supernet.model = prepare(self.supernet.model, self.world, self.settings.activation_checkpointing)
        self.optimizer = make_optimizer(self.supernet.model, self.settings)
        self.tied = list(tied_weight_keys(self.supernet.model))
        if pointer is None:
            return RunState()
        load_state(self.ckpt / pointer["dir"], self.supernet.model, self.optimizer, self.tied)
        report(self.callback, "finetune", message=f"resuming {self.out} from step {pointer['step']}")
        return RunState(step=pointer["step"], history=pointer["history"])

    def _pointer(self) -> dict | None:
        """The last checkpoint's pointer (same settings checked), or None for a fresh run."""
        pointer_file = self.ckpt / POINTER
        if not pointer_file.is_file():
            # a run killed before its first checkpoint leaves only an empty or partial checkpoint dir
            if self.out.exists() and any(p.name != CHECKPOINT_DIR for p in self.out.iterdir()):
                raise BadInputError(f"{self.out}: directory exists, is not empty and holds no checkpoint; "
                                    "refusing to overwrite it", param="out")  # fmt: skip
            return None
        pointer = read_json(pointer_file, "checkpoint pointer")
        _check_same_run(pointer.get("run", {}), self.run, pointer_file)
        if pointer.get("schema_version") != CHECKPOINT_SCHEMA:
            raise BadInputError(f"{pointer_file}: a checkpoint of another version of this toolkit "
                                f"(schema {pointer.get('schema_version')}, expected {CHECKPOINT_SCHEMA})")  # fmt: skip
        return pointer

    def train(self, state: RunState, stop_after: int | None) -> RunState:
        settings = self.settings
        tokens_per_step = settings.batch_size * settings.seq_len
        end = settings.steps if stop_after is None else min(settings.steps, state.step + stop_after)
        start_time, start_step = time.perf_counter(), state.step
        report(self.callback, "finetune", state.step, settings.steps, "step")
        while state.step < end:
            batch = _batch(self.ids, settings, state.step)
            losses = train_step(self.supernet, self.space, batch, self.optimizer, settings, state.step, self.world,
                                self.micro_batches)  # fmt: skip
            if not all(math.isfinite(v) for v in losses.values()):
                raise LlamanasError(f"step {state.step}: the loss is not finite ({losses}); try a lower learning rate")
            state.history.append(losses)
            state.step += 1
            rate = (state.step - start_step) * tokens_per_step / (time.perf_counter() - start_time)
            sub = f" sub={losses['loss_sub']:.3f}" if "loss_sub" in losses else ""
            if state.step % settings.save_every == 0 or state.step == end:
                self.save_checkpoint(state)
            status = f"loss={losses['loss_full']:.3f}{sub} tok/s={rate:.0f}"
            report(self.callback, "finetune", state.step, settings.steps, "step", status=status)
        return state

    def save_checkpoint(self, state: RunState) -> None:
        """Every process writes its shards into a new directory; rank 0 then moves it in place and
        replaces the pointer, so a crash at any moment leaves the previous checkpoint intact."""
        from .distributed import save_state
        from .jsonfiles import write_json

        name = f"state-{state.step:07d}"
        partial = self.ckpt / f".{name}.tmp"
        if self.world.main:
            shutil.rmtree(partial, ignore_errors=True)
        self.world.barrier()
        save_state(partial, self.supernet.model, self.optimizer, self.tied)
        if self.world.main:
            shutil.rmtree(self.ckpt / name, ignore_errors=True)
            partial.replace(self.ckpt / name)
            pointer = {"schema_version": CHECKPOINT_SCHEMA, "step": state.step, "dir": name, "run": self.run,
                       "processes": self.world.size, "history": state.history}  # fmt: skip
            write_json(self.ckpt / POINTER, pointer, indent=None)
            for old in self.ckpt.glob("state-*"):
                if old.name != name:
                    shutil.rmtree(old)
        self.world.barrier()

    def save_final(self, source, state: RunState) -> FinetuneResult:
        """config.json, model.safetensors (gathered from the shards), tokenizer files and training.json
        (rank 0); then the checkpoint is dropped."""
        from .distributed import full_state_dict

        weights = full_state_dict(self.supernet.model, self.world)
        result = FinetuneResult(self.out, "finished", state.step, self.run, state.history)
        if self.world.main:
            _write_result(self.supernet.model, weights, source, result)
        self.world.barrier()
        return result


def _check_same_run(saved: dict, run: dict, source: Path) -> None:
    saved = {"compute_dtype": "float32"} | saved  # runs recorded before the setting existed computed in float32
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


def _write_result(model, weights: dict, source, result: FinetuneResult) -> None:
    from .concepts import SUPERNET_FILES
    from .jsonfiles import write_json
    from .model.build import save_model
    from .model.families import resolve_model_path

    out = result.out
    source_dir = resolve_model_path(source)
    source_dir = source_dir if source_dir.is_dir() else source_dir.parent
    save_model(model, out, dtype=result.run["save_dtype"], state_dict=weights)
    for name in SUPERNET_FILES:
        if (source_dir / name).is_file() and source_dir.resolve() != out.resolve():
            shutil.copyfile(source_dir / name, out / f".{name}.tmp")
            os.replace(out / f".{name}.tmp", out / name)
    write_json(out / RECORD, result.record(), indent=1)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None
