"""The optimizer and the learning-rate schedule of a run.

Schedules step once per optimizer step: ``cosine`` anneals from ``lr`` to 0 over all steps of the
run, ``onecycle`` warms up to ``lr`` over the first 30% then anneals.
"""

from __future__ import annotations

import torch
from torch import nn

from lungseg.training.config import TrainConfig


def make_optimizer(cfg: TrainConfig, model: nn.Module, device: torch.device) -> torch.optim.Adam:
    """Fused Adam: one kernel for all parameters, and its step counters never read back to the
    host. On CUDA its learning rate is a device tensor that the schedule updates in place, so a
    captured step graph sees each new rate."""
    lr = torch.tensor(cfg.lr, device=device) if device.type == "cuda" else cfg.lr
    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=cfg.weight_decay, fused=True)


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total_steps
        )
    return None
