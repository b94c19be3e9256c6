"""One optimizer update: the full network's and the sub-networks' passes, their losses (labels or
in-place distillation), gradient clipping and AdamW."""

from __future__ import annotations

from ..distributed import World
from ..space import SearchSpace
from ..subnet_config import SubnetConfig
from .batches import learning_rate, step_subnets
from .settings import FinetuneSettings


def make_optimizer(model, settings: FinetuneSettings):
    """AdamW; weight decay on matrices only (not on norms and biases)."""
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(0.9, 0.95))


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
