"""Segmentation models, built by name: ``create_model("unet", n_filters=16)``, plus what describes
a trained one: the checkpoint format (:mod:`~lungseg.models.checkpoint`), the shipped weights
(:mod:`~lungseg.models.shipped`) and the one model identity (:mod:`~lungseg.models.identity`).

All models map ``(B, in_channels, H, W)`` images to ``(B, 1, H, W)`` logits. To add an
architecture: a short file here that wires blocks of :mod:`~lungseg.models.blocks`, decorated
with ``@register_model("name")``, and its module name in ``_registry.ARCHITECTURES``.
The names below are imported on first use, so ``lungseg.models.shipped`` and
``lungseg.models.identity`` (the command line's help) do not load PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelInfo": "_registry",
    "create_model": "_registry",
    "list_models": "_registry",
    "model_info": "_registry",
    "register_model": "_registry",
    "SegmentationModel": "blocks",
    "count_parameters": "blocks",
    "valid_size": "blocks",
    "DeepLabV3": "deeplabv3",
    "FCN": "fcn",
    "UNet": "unet",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lungseg.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lungseg.models.{_EXPORTS[name]}"), name)
