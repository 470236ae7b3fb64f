"""Training: the loop, its checkpoints, augmentation and multi-process support.

``train(TrainConfig(model="unet", epochs=50), "cache/", "runs/unet")`` trains and records a run;
:func:`load_checkpoint` and :func:`model_from_checkpoint` rebuild a trained model from its
``best.pt`` or ``last.pt``.
"""

from lungseg.training.augment import AugmentConfig, augment_batch
from lungseg.training.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from lungseg.training.engine import RunResult, TrainConfig, resolve_data, train

__all__ = [
    "CHECKPOINT_FORMAT",
    "AugmentConfig",
    "RunResult",
    "TrainConfig",
    "augment_batch",
    "load_checkpoint",
    "model_from_checkpoint",
    "resolve_data",
    "save_checkpoint",
    "train",
]
