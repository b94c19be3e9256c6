"""A run's files in its output directory: the checkpoint it resumes from, and the finished result.

`OUT/checkpoint/` holds the last checkpoint, `state-NNNNNNN/` (torch.distributed.checkpoint shards
of the model, the optimizer and the torch RNG), and `checkpoint.json`, which points to it and
records the step, the loss history and the run's settings. The finished run is a Hugging Face
checkpoint directory with `training.json`; its checkpoint is then dropped.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..concepts import SUPERNET_FILES
from ..distributed import World, load_state, save_state
from ..errors import BadInputError
from ..jsonfiles import read_json, write_json
from ..model.families import resolve_model_path
from ..progress import Callback, report
from .settings import FinetuneResult

CHECKPOINT_DIR = "checkpoint"
POINTER = "checkpoint.json"
CHECKPOINT_SCHEMA = 2  # 2: a directory of torch.distributed.checkpoint shards (1: one safetensors file)
RECORD = "training.json"


@dataclass
class RunState:
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Checkpoints:
    """The checkpoints of one run (`run`: its settings, which a resumed run must share) in `out/checkpoint/`."""

    out: Path
    run: dict
    world: World

    @property
    def directory(self) -> Path:
        return self.out / CHECKPOINT_DIR

    def pointer(self) -> dict | None:
        """The last checkpoint's pointer (same settings checked), or None for a fresh run."""
        pointer_file = self.directory / POINTER
        if not pointer_file.is_file():
            # a run killed before its first checkpoint leaves only an empty or partial checkpoint dir
            if self.out.exists() and any(p.name != CHECKPOINT_DIR for p in self.out.iterdir()):
                raise BadInputError(f"{self.out}: directory exists, is not empty and holds no checkpoint; "
                                    "refusing to overwrite it", param="out")  # fmt: skip
            return None
        pointer = read_json(pointer_file, "checkpoint pointer")
        check_same_run(pointer.get("run", {}), self.run, pointer_file)
        if pointer.get("schema_version") != CHECKPOINT_SCHEMA:
            raise BadInputError(f"{pointer_file}: a checkpoint of another version of this toolkit "
                                f"(schema {pointer.get('schema_version')}, expected {CHECKPOINT_SCHEMA})")  # fmt: skip
        return pointer

    def load(self, pointer: dict, model, optimizer, tied: list[str]) -> RunState:
        """Load the checkpoint `pointer` points to into `model` and `optimizer`; the state it was saved in."""
        load_state(self.directory / pointer["dir"], model, optimizer, tied)
        return RunState(step=pointer["step"], history=pointer["history"])

    def save(self, state: RunState, model, optimizer, tied: list[str]) -> None:
        """Every process writes its shards into a new directory; rank 0 then moves it in place and
        replaces the pointer, so a crash at any moment leaves the previous checkpoint intact."""
        name = f"state-{state.step:07d}"
        partial = self.directory / f".{name}.tmp"
        if self.world.main:
            shutil.rmtree(partial, ignore_errors=True)
        self.world.barrier()
        save_state(partial, model, optimizer, tied)
        if self.world.main:
            shutil.rmtree(self.directory / name, ignore_errors=True)
            partial.replace(self.directory / name)
            pointer = {"schema_version": CHECKPOINT_SCHEMA, "step": state.step, "dir": name, "run": self.run,
                       "processes": self.world.size, "history": state.history}  # fmt: skip
            write_json(self.directory / POINTER, pointer, indent=None)
            for old in self.directory.glob("state-*"):
                if old.name != name:
                    shutil.rmtree(old)
        self.world.barrier()


def check_same_run(saved: dict, run: dict, source: Path) -> None:
    """`BadInputError` unless the settings `saved` in `source` are those of `run`."""
    saved = {"compute_dtype": "float32"} | saved  # runs recorded before the setting existed computed in float32
    changed = sorted(k for k in set(saved) | set(run) if saved.get(k) != run.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {saved.get(k)!r} -> {run.get(k)!r}" for k in changed[:3])
        raise BadInputError(f"{source}: this run was started with other settings ({diffs}); use a new directory",
                            param="out")  # fmt: skip


def finished_record(out: Path, run: dict, callback: Callback) -> FinetuneResult | None:
    """The result of the same run, finished earlier in `out`; None when it has not finished."""
    record_file = out / RECORD
    if not record_file.is_file():
        return None
    record = read_json(record_file, "training record")
    check_same_run(record.get("run", {}), run, record_file)
    report(callback, "finetune", message=f"{out}: this run already finished")
    return FinetuneResult.from_record(out, record)


def write_result(model, weights: dict, source, result: FinetuneResult) -> None:
    """config.json, model.safetensors (`weights`), the source's tokenizer files and training.json; then
    the checkpoint is dropped."""
    from ..model.build import save_model

    out = result.directory
    source_dir = resolve_model_path(source)
    source_dir = source_dir if source_dir.is_dir() else source_dir.parent
    save_model(model, out, dtype=result.run["save_dtype"], state_dict=weights)
    for name in SUPERNET_FILES:
        if (source_dir / name).is_file() and source_dir.resolve() != out.resolve():
            shutil.copyfile(source_dir / name, out / f".{name}.tmp")
            os.replace(out / f".{name}.tmp", out / name)
    write_json(out / RECORD, result.record(), indent=1)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
