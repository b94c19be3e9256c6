"""What each step trains on, as functions of the settings and the step: the token stream, the batch,
the sub-networks after the full network, and the learning rate."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ..data import load_tokenizer, read_texts, tokenize
from ..errors import BadInputError
from ..model.families import read_config_dict
from ..space import SearchSpace
from ..subnet_config import SubnetConfig
from .settings import FinetuneSettings


def training_rows(model: str | Path, data: Sequence[str], text_field: str, seq_len: int):
    """The token stream of all data files (a 1-D tensor), documents separated by the eos token."""
    import torch

    tokenizer = load_tokenizer(model)
    eos = read_config_dict(model)[0].get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos  # documents end with the model's own eos token
    ids: list[int] = []
    for source in data:
        ids += tokenize(read_texts(source, text_field), tokenizer, eos)
    if len(ids) < 2 * seq_len:
        raise BadInputError(f"{', '.join(data)}: {len(ids)} tokens, fewer than two sequences of {seq_len}", param="data")
    return torch.tensor(ids, dtype=torch.long)


def step_batch(ids, settings: FinetuneSettings, step: int):
    """The global batch of `step`: rows of `seq_len + 1` tokens of `ids`; each epoch shifts the chunk
    boundaries and shuffles the rows."""
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


def learning_rate(step: int, settings: FinetuneSettings) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio * lr`."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    floor = settings.min_lr_ratio
    return settings.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))
