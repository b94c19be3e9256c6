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

`finetune()` runs the package's parts: `settings.py` (`FinetuneSettings`, `FinetuneResult`),
`batches.py` (the data, each step's batch, sub-networks and learning rate), `step.py` (one
optimizer update, distillation) and `checkpoints.py` (checkpoint files, resuming, the finished
directory). Neuron reordering is `model.importance.reorder_neurons_`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .. import distributed
from ..errors import LlamanasError
from ..progress import Callback, report
from ..space import SearchSpace, load_space
from .batches import learning_rate, step_batch, step_subnets, training_rows
from .checkpoints import (
    CHECKPOINT_DIR, CHECKPOINT_SCHEMA, POINTER, RECORD, Checkpoints, RunState, check_same_run, finished_record,
    write_result,
)  # fmt: skip
from .settings import COMPUTE_DTYPES, SAVE_DTYPES, STRATEGIES, FinetuneResult, FinetuneSettings, default_compute_dtype
from .step import make_optimizer, train_step

if TYPE_CHECKING:
    from ..model.supernet import SuperNetwork

__all__ = [
    "CHECKPOINT_DIR", "CHECKPOINT_SCHEMA", "COMPUTE_DTYPES", "POINTER", "RECORD", "SAVE_DTYPES", "STRATEGIES",
    "FinetuneResult", "FinetuneSettings", "check_same_run", "default_compute_dtype", "finetune", "learning_rate",
    "make_optimizer", "step_batch", "step_subnets", "train_step", "training_rows",
]  # fmt: skip


def finetune(
    supernet: SuperNetwork | str | Path,
    space: SearchSpace | str | Path,
    data: Sequence[str],
    settings: FinetuneSettings = FinetuneSettings(),
    *,
    out: str | Path,
    text_field: str = "text",
    callback: Callback = None,
    stop_after: int | None = None,
) -> FinetuneResult:
    """Fine-tune `supernet` (a `SuperNetwork`, trained in place, or a checkpoint dir / built-in name) on `data`.

    `space`: a `SearchSpace` or its name / file. The finished run is a checkpoint directory in `out`;
    the same call after a crash resumes.
    Under torchrun, every process makes this call: the model is sharded with FSDP2, and only
    rank 0 reports progress and writes files besides its checkpoint shards.
    `stop_after` ends the call after that many steps of this call (the run stays resumable).
    """
    out, space = Path(out), load_space(space)
    source = _source(supernet)
    run = {"model": str(source), "space_id": space.id, "data": list(data), "text_field": text_field}
    run |= settings.identity()
    with distributed.world(settings.device) as world:
        callback = callback if world.main else None
        micro_batches = distributed.check_batch(settings.batch_size, settings.micro_batch_size, world.size)
        finished = finished_record(out, run, callback)
        if finished is not None:
            return finished
        trainer = _Trainer(space, settings, world, micro_batches, Checkpoints(out, run, world), callback)
        state = trainer.start(supernet, training_rows(source, data, text_field, settings.seq_len))
        state = trainer.train(state, stop_after)
        if state.step < settings.steps:
            return FinetuneResult(out, "stopped", state.step, run, state.history)
        return trainer.save_final(source, state)


def _source(supernet: SuperNetwork | str | Path) -> Path | str:
    """Where the model comes from: a loaded super-network's directory, else the name or path given."""
    return getattr(supernet, "source", supernet)


def _load_supernet(supernet: SuperNetwork | str | Path, space: SearchSpace, settings: FinetuneSettings) -> SuperNetwork:
    from ..model.supernet import SuperNetwork, load_supernet

    if settings.from_scratch:
        loaded = SuperNetwork.random(_source(supernet), settings.seed)
        loaded.check_space(space)
    else:
        loaded = load_supernet(supernet, space)
    loaded.model.train()
    return loaded


class _Trainer:
    """One run in one process: its model, optimizer and world; its checkpoints."""

    def __init__(self, space: SearchSpace, settings: FinetuneSettings, world, micro_batches: int,
                 checkpoints: Checkpoints, callback: Callback):  # fmt: skip
        self.space, self.settings, self.world, self.micro_batches = space, settings, world, micro_batches
        self.checkpoints, self.callback = checkpoints, callback

    def start(self, model, ids) -> RunState:
        """Load (and on a fresh run reorder) the super-network, shard it, and resume from the checkpoint if any."""
        import torch

        from ..model.build import tied_weight_keys
        from ..model.importance import reorder_neurons_

        torch.manual_seed(self.settings.seed)
        self.ids = ids
        self.supernet = _load_supernet(model, self.space, self.settings)
        pointer = self.checkpoints.pointer()
        if pointer is None and self.settings.reorder_neurons:
            reorder_neurons_(self.supernet.model, [step_batch(ids, self.settings, s)[:, :-1] for s in range(4)])
        self.supernet.model = distributed.prepare(self.supernet.model, self.world, self.settings.activation_checkpointing)
        self.optimizer = make_optimizer(self.supernet.model, self.settings)
        self.tied = list(tied_weight_keys(self.supernet.model))
        if pointer is None:
            return RunState()
        state = self.checkpoints.load(pointer, self.supernet.model, self.optimizer, self.tied)
        report(self.callback, "finetune", message=f"resuming {self.checkpoints.out} from step {pointer['step']}")
        return state

    def train(self, state: RunState, stop_after: int | None) -> RunState:
        settings = self.settings
        tokens_per_step = settings.batch_size * settings.seq_len
        end = settings.steps if stop_after is None else min(settings.steps, state.step + stop_after)
        start_time, start_step = time.perf_counter(), state.step
        report(self.callback, "finetune", state.step, settings.steps, "step")
        while state.step < end:
            batch = step_batch(self.ids, settings, state.step)
            losses = train_step(self.supernet, self.space, batch, self.optimizer, settings, state.step, self.world,
                                self.micro_batches)  # fmt: skip
            if not all(math.isfinite(v) for v in losses.values()):
                raise LlamanasError(f"step {state.step}: the loss is not finite ({losses}); try a lower learning rate")
            state.history.append(losses)
            state.step += 1
            rate = (state.step - start_step) * tokens_per_step / (time.perf_counter() - start_time)
            sub = f" sub={losses['loss_sub']:.3f}" if "loss_sub" in losses else ""
            if state.step % settings.save_every == 0 or state.step == end:
                self.checkpoints.save(state, self.supernet.model, self.optimizer, self.tied)
            status = f"loss={losses['loss_full']:.3f}{sub} tok/s={rate:.0f}"
            report(self.callback, "finetune", state.step, settings.steps, "step", status=status)
        return state

    def save_final(self, source, state: RunState) -> FinetuneResult:
        """The finished checkpoint directory (weights gathered from the shards, written by rank 0)."""
        weights = distributed.full_state_dict(self.supernet.model, self.world)
        result = FinetuneResult(self.checkpoints.out, "finished", state.step, self.checkpoints.run, state.history)
        if self.world.main:
            write_result(self.supernet.model, weights, source, result)
        self.world.barrier()
        return result
