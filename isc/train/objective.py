"""The training objective and schedule: InfoNCE with the differential-entropy (KoLeo) regulariser over the
batch of every process, the learning-rate schedule, and the layers kept frozen."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def instance_targets(sources: torch.Tensor, shares: torch.Tensor, n_instances: int, offset: int = 0) -> torch.Tensor:
    """``[R, n_instances]``: each row's share of every image, ``offset`` added to the (per-process) indices."""
    targets = torch.zeros(len(sources), n_instances, device=shares.device, dtype=torch.float32)
    return targets.scatter_add_(1, sources + offset, shares.float())


def sscd_loss(
    embeddings: torch.Tensor,
    targets: torch.Tensor,
    all_embeddings: torch.Tensor | None = None,
    all_targets: torch.Tensor | None = None,
    offset: int = 0,
    temperature: float = 0.05,
    entropy_weight: float = 3.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """InfoNCE over a batch plus the differential-entropy (KoLeo) regulariser; returns (loss, statistics).

    ``embeddings [R, D]`` and ``targets [R, G]`` are this process's rows; ``all_*`` the whole batch of all
    processes (default: the same), in which this process's rows start at ``offset``. Two rows are positives in
    proportion to the images they share (``targets @ all_targets.T``), negatives when they share none.
    """
    all_embeddings = embeddings if all_embeddings is None else all_embeddings
    all_targets = targets if all_targets is None else all_targets
    embeddings, all_embeddings = F.normalize(embeddings.float(), dim=1), F.normalize(all_embeddings.float(), dim=1)
    similarity = embeddings @ all_embeddings.T
    overlap = targets @ all_targets.T
    rows = torch.arange(len(embeddings), device=embeddings.device)
    is_self = torch.zeros_like(overlap, dtype=torch.bool)
    is_self[rows, rows + offset] = True
    positive = overlap.masked_fill(is_self, 0)
    negative = overlap == 0

    # SSCD's InfoNCE: each positive against the row's negatives only (not against the other positives)
    logits = similarity / temperature
    negatives_logsumexp = logits.masked_fill(~negative, -math.inf).logsumexp(dim=1, keepdim=True)
    log_probability = logits - torch.logaddexp(logits, negatives_logsumexp)
    infonce = (-(log_probability * positive).sum(1) / positive.sum(1).clamp_min(1e-6)).mean()

    # KoLeo: push every row away from its nearest negative (the log distance estimates differential entropy)
    nearest_negative = similarity.masked_fill(~negative, -1.0).max(dim=1).values
    entropy = -(2 - 2 * nearest_negative).clamp_min(1e-6).sqrt().log().mean()
    loss = infonce + entropy_weight * entropy
    with torch.no_grad():
        stats = {
            "infonce": infonce.item(),
            "entropy": entropy.item(),
            "positive_similarity": ((similarity * positive).sum() / positive.sum().clamp_min(1e-6)).item(),
            "negative_similarity": ((similarity * negative).sum() / negative.sum().clamp_min(1)).item(),
            "nearest_negative_similarity": nearest_negative.mean().item(),
        }
    return loss, stats


def gather_batch(embeddings: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Every process's rows (embeddings differentiably) and the offset of this process's rows among them."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return embeddings, targets, 0
    import torch.distributed.nn.functional as distributed_nn

    all_embeddings = torch.cat(distributed_nn.all_gather(embeddings))
    gathered_targets = [torch.empty_like(targets) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered_targets, targets)
    return all_embeddings, torch.cat(gathered_targets), dist.get_rank() * len(embeddings)


def learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up to ``peak`` over ``warmup_steps``, then a cosine decay to zero at ``total_steps``."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def freeze_first_layers(model: nn.Module, fraction: float) -> None:
    """Freeze the first ``fraction`` of the parameter tensors, in network order: the early, high-resolution
    layers keep their ImageNet filters, and autograd skips their backward pass (the costliest one)."""
    parameters = list(model.parameters())
    for parameter in parameters[: round(fraction * len(parameters))]:
        parameter.requires_grad_(False)


def freeze_batch_norm(model: nn.Module) -> None:
    """Keep BatchNorm layers on their ImageNet statistics and weights (small batches make poor estimates)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
            module.requires_grad_(False)
