"""The training objective of the reference: class-weighted cross-entropy plus lambda times
the text-guided contrastive loss (DESIGN.md, "Loss")."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from expr.core.abaw import NUM_CLASSES
from expr.train_heads.model import ExprHeadModel


def class_weights(targets: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """w_c = N / (classes * count_c) over the training targets, as the reference.

    A class that never occurs gets weight 0 instead of inf: it is never a target, so the
    weight changes no loss value, and an inf would turn the weighted mean into NaN.
    """
    counts = torch.bincount(targets.long().cpu(), minlength=num_classes).double()
    weights = counts.sum() / (num_classes * counts.clamp(min=1))
    return torch.where(counts > 0, weights, torch.zeros_like(weights)).float()


def head_loss(module: ExprHeadModel, logits: torch.Tensor, embed: torch.Tensor, target: torch.Tensor,
              weights: torch.Tensor, contrastive_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, ce, contrastive) of one micro-batch; losses in float32 even under bf16 autocast."""
    ce = F.cross_entropy(logits.float(), target, weight=weights)
    con = module.contrastive_loss(embed.float(), target)
    return ce + contrastive_weight * con, ce, con
