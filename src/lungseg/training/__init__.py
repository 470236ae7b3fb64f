"""Training: the loop, its settings, checkpoints, augmentation and multi-process support.

``train(TrainConfig(model="unet", epochs=50), "cache/", "runs/unet")`` trains and records a run;
:func:`load_checkpoint` and :func:`model_from_checkpoint` rebuild a trained model from its
``best.pt`` or ``last.pt``.

======================  ============================================================
``config``              :class:`TrainConfig` and how ``lungseg train`` resolves it
``data``                the prepared data a run reads (or prepares first)
``engine``              :func:`train`: the loop
``step``                one training step (a CUDA graph on a GPU), validation sums
``optim``               Adam and the learning-rate schedule
``seeding``             every random stream from ``(seed, epoch, rank)``
``rundir``              the run directory: its files, resume, the summary
``writer``              the per-epoch files, written off the training thread
``losses``              BCE and BCE + soft Dice on logits
``augment``             batch augmentation on the training device
``checkpoint``          what a checkpoint holds; saving, loading, resuming
``distributed``         ``torchrun`` process groups, sharding, reductions
======================  ============================================================

The names below are imported on first use, so ``lungseg.training.config`` (and the command
line's help) does not load PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AugmentConfig": "lungseg.training.config",
    "TrainConfig": "lungseg.training.config",
    "RunResult": "lungseg.training.rundir",
    "train": "lungseg.training.engine",
    "augment_batch": "lungseg.training.augment",
    "CHECKPOINT_FORMAT": "lungseg.models.checkpoint",
    "load_checkpoint": "lungseg.models.checkpoint",
    "model_from_checkpoint": "lungseg.models.checkpoint",
    "save_checkpoint": "lungseg.models.checkpoint",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lungseg.training' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
