"""Training losses on logits: ``BCEWithLogitsLoss`` (the study's) and BCE + soft Dice."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from lungseg.core.errors import LungsegError
from lungseg.training.config import LOSSES


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """``1 -`` the mean over images of the soft Dice of ``sigmoid(logits)`` and ``target``.

    Args:
        logits: ``float[B, 1, H, W]``.
        target: ``float[B, 1, H, W]`` in ``{0, 1}``.
        smooth: added to numerator and denominator; keeps the loss defined (and 0) when both
            the prediction and the target of an image are empty.
    """
    prob = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    return 1 - ((2 * inter + smooth) / (denom + smooth)).mean()


def make_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The loss ``(logits, target) -> scalar`` (mean over the batch) called ``name``."""
    bce = nn.BCEWithLogitsLoss()
    if name == "bce":
        return bce
    if name == "bce_dice":
        return lambda logits, target: bce(logits, target) + soft_dice_loss(logits, target)
    raise LungsegError(f"unknown loss {name!r}; valid: {', '.join(LOSSES)}")
