"""torch.distributed for fine-tuning: the processes torchrun starts, FSDP2 sharding, DCP checkpoints.

One process (no launcher) is a `World` of size 1 and trains the plain model. Under `torchrun`
every process joins the process group (NCCL on GPUs, gloo on CPU), each decoder layer and then
the whole model are sharded with FSDP2 (`fully_shard`), and each process trains its slice of
the global batch. Parameter names do not change under FSDP2, so a checkpoint written by N
processes is read by M (torch.distributed.checkpoint reshards it).

Checkpoints are written with DCP's Hugging Face storage: safetensors files whose sharding is
described in JSON (no pickles). Optimizer hyper-parameters are not stored: they come from the
settings, and the learning rate is set at every step.
"""

from __future__ import annotations

import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import BadInputError

LAUNCHER_ENV = ("LOCAL_RANK", "WORLD_SIZE", "RANK")  # set by torchrun (and by other launchers)


@dataclass(frozen=True)
class World:
    """The processes of one run: this one's rank, how many there are, its device; `sharded` under FSDP2."""

    rank: int = 0
    size: int = 1
    device: str = "cpu"
    sharded: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the one process that logs, reports progress and writes files other than shards."""
        return self.rank == 0

    def shard(self, rows):
        """This process's rows of a global batch: contiguous, equal and disjoint slices."""
        per = len(rows) // self.size
        return rows[self.rank * per : (self.rank + 1) * per]

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over processes of each value (identical on every rank afterwards)."""
        if not self.sharded:
            return values
        import torch
        import torch.distributed as dist

        keys = sorted(values)
        total = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return {k: v / self.size for k, v in zip(keys, total.tolist())}

    def barrier(self) -> None:
        if self.sharded:
            import torch.distributed as dist

            dist.barrier()


def launched() -> bool:
    """Whether a launcher such as torchrun started this process as one of a group."""
    return all(name in os.environ for name in LAUNCHER_ENV)


def rank() -> int:
    """This process's rank in its launch (0 when not launched as one of a group)."""
    return int(os.environ.get("RANK", 0)) if launched() else 0


@contextmanager
def world(device: str = "cpu") -> Iterator[World]:
    """The `World` of this process: joins the process group when launched by torchrun (and leaves it after)."""
    import torch.distributed as dist

    if not launched() and not dist.is_initialized():
        yield World(device=device)
        return
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        import torch

        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    try:
        yield World(dist.get_rank(), dist.get_world_size(), device, sharded=True)
        if created:
            dist.barrier()
    finally:
        if created:
            dist.destroy_process_group()


def check_batch(batch_size: int, micro_batch_size: int | None, processes: int) -> int:
    """Micro-batches per step for each process; `BadInputError` when the launch cannot split the global batch."""
    if batch_size % processes:
        raise BadInputError(f"global batch {batch_size} is not divisible by the {processes} processes launched",
                            param="batch_size")  # fmt: skip
    per_process = batch_size // processes
    micro = micro_batch_size or per_process
    if per_process % micro:
        raise BadInputError(f"{micro} does not divide the {per_process} rows each of {processes} processes trains",
                            param="micro_batch_size")  # fmt: skip
    return per_process // micro


def prepare(model, world: World, activation_checkpointing: bool = False):
    """The model ready to train in this world: on its device, or sharded with FSDP2 (one unit per decoder layer).

    On GPUs the sharded model computes in bfloat16 and reduces gradients in float32; on CPU all is float32.
    """
    if activation_checkpointing:
        _checkpoint_activations(model)
    if not world.sharded:
        return model.to(world.device)
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(world.device.split(":")[0], (world.size,))
    on_gpu = world.device.startswith("cuda")
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if on_gpu else MixedPrecisionPolicy()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    return fully_shard(model, mesh=mesh, mp_policy=policy)


def _checkpoint_activations(model) -> None:
    """Recompute decoder layers in the backward pass (transformers renamed the switch in a late 5.x)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


# ---- checkpoints ----------------------------------------------------------------------------


def save_state(directory: Path, model, optimizer, skip: Sequence[str] = ()) -> None:
    """Model and optimizer tensors (each process writes its shards) and the torch RNG, into `directory`.

    `skip`: parameter names not to store (tied weights: their tensor is stored under the other name).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    from torch.distributed.checkpoint.api import CheckpointException

    writer = HuggingFaceStorageWriter(str(directory), save_distributed=True)
    try:
        with _single_process_quiet():
            dcp.save(_tensors(model, optimizer, skip), storage_writer=writer, no_dist=_single())
    except (Exception, CheckpointException) as err:  # DCP's own exception derives from BaseException
        raise BadInputError(f"{directory}: cannot write checkpoint ({_first_line(err)})") from None


def load_state(directory: Path, model, optimizer, skip: Sequence[str] = ()) -> None:
    """Load what `save_state` wrote into `model` and `optimizer` (any number of processes may have written it)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    from torch.distributed.checkpoint.api import CheckpointException

    state = _tensors(model, optimizer, skip)
    try:
        with _single_process_quiet():
            dcp.load(state, storage_reader=HuggingFaceStorageReader(str(directory)), no_dist=_single())
    except (Exception, CheckpointException) as err:  # DCP wraps reader failures in its own types, one a BaseException
        raise BadInputError(f"{directory}: cannot read checkpoint ({_first_line(err)})") from None
    full = _state_dicts(model, optimizer)[1]
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=full | state["optim"],
                   options=StateDictOptions(strict=False, flatten_optimizer_state_dict=True))  # fmt: skip
    torch.set_rng_state(state["rng"]["torch"])


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every call without a process group; one process is a use this module intends."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def _single() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized()


def _state_dicts(model, optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(flatten_optimizer_state_dict=True))


def _tensors(model, optimizer, skip: Sequence[str]) -> dict[str, Any]:
    import torch

    weights, optim = _state_dicts(model, optimizer)
    return {
        "model": {k: v for k, v in weights.items() if k not in skip},
        "optim": {k: v for k, v in optim.items() if isinstance(v, torch.Tensor)},
        "rng": {"torch": torch.get_rng_state()},
    }


def full_state_dict(model, world: World) -> dict[str, Any] | None:
    """The whole model's weights as full CPU tensors on rank 0 (None on the others); a collective call."""
    if not world.sharded:
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if world.main else None


# ---- launching ------------------------------------------------------------------------------


def torchrun_command(nproc: int, args: Sequence[str]) -> list[str]:
    """The single-node torchrun command that runs `llamanas ARGS` in `nproc` processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "llamanas_deploy", *args]  # fmt: skip
