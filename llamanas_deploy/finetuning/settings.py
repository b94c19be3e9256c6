"""What a fine-tuning run is asked to do (`FinetuneSettings`) and what it did (`FinetuneResult`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..concepts import DEVICES
from ..errors import BadInputError

STRATEGIES = ("paper", "sandwich", "full")
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
    from ..profiler.fingerprint import cpu_isa_flags  # looked up when called: tests patch it

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


@dataclass(frozen=True)
class FinetuneResult:
    """A run's outcome: `finished` (the checkpoint is in `directory`) or `stopped` (resumable)."""

    directory: Path
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
        return {k: v for k, v in self.record().items() if k != "history"} | {"out": str(self.directory)}

    @classmethod
    def from_record(cls, out: Path, record: dict[str, Any]) -> "FinetuneResult":
        return cls(out, record["status"], record["steps"], record["run"], record["history"])


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None
