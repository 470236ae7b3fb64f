"""Segmentation models, built by name: ``create_model("unet", n_filters=16)``.

Importing this package registers every architecture; :func:`list_models` gives their names.
All models map ``(B, in_channels, H, W)`` images to ``(B, 1, H, W)`` logits.
"""

from lungseg.models._registry import (
    ModelInfo,
    create_model,
    list_models,
    model_info,
    register_model,
)
from lungseg.models.blocks import SegmentationModel, count_parameters, valid_size
from lungseg.models.deeplabv3 import DeepLabV3
from lungseg.models.fcn import FCN
from lungseg.models.unet import UNet

__all__ = [
    "FCN",
    "DeepLabV3",
    "ModelInfo",
    "SegmentationModel",
    "UNet",
    "count_parameters",
    "create_model",
    "list_models",
    "model_info",
    "register_model",
    "valid_size",
]
