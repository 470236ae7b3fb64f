"""Test-time augmentation (TTA): average a model's probabilities over zoomed and rotated views.

Each view zooms or rotates the image about its centre, the network predicts on the view, and the
prediction is warped back onto the image. Views stay inside the ranges the models were trained
with (zoom 1 +- 0.1, rotation +- 10 degrees; see :mod:`lungseg.training.augment`) and are
padded with zeros like the training augmentation. A pixel that a view does not show (the border
of a zoomed-in view) is averaged over the views that do. There are no flips: the models never
saw a mirrored chest, and on validation a flipped view lowered Dice (unet-fast: 0.9528 -> 0.9492).

TTA costs one forward pass per view. Whether it helps depends on the model: the validation and
test figures of each shipped model with and without it are in the model card.

A PyTorch network on a GPU keeps the whole of it there (:func:`tta_probabilities_torch`: the
warps are ``grid_sample`` with the same bilinear kernel, zero border and pixel-centre convention
as OpenCV's ``warpAffine``); elsewhere the views are warped with OpenCV on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from lungseg.core.errors import LungsegError

#: ``float32[B, 1, H, W]`` in [0, 1] -> probabilities ``float32[B, H, W]``.
Network = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class View:
    """One augmented view: zoom factor (> 1 enlarges) and rotation in degrees (anticlockwise)."""

    scale: float = 1.0
    rotation: float = 0.0

    def __post_init__(self) -> None:
        if not 0.5 <= self.scale <= 2.0:
            raise LungsegError(f"TTA view scale must be in [0.5, 2], got {self.scale}")
        if not -45.0 <= self.rotation <= 45.0:
            raise LungsegError(f"TTA view rotation must be in [-45, 45] degrees: {self.rotation}")

    def describe(self) -> str:
        parts = [f"zoom {self.scale:g}"] if self.scale != 1.0 else []
        parts += [f"rotate {self.rotation:+g}"] if self.rotation else []
        return ", ".join(parts) or "identity"


#: The identity, zoom 0.9 and 1.1, rotation +-5 degrees.
DEFAULT_VIEWS: tuple[View, ...] = (
    View(),
    View(scale=0.9),
    View(scale=1.1),
    View(rotation=5.0),
    View(rotation=-5.0),
)


def view_matrix(view: View, height: int, width: int) -> np.ndarray:
    """The ``2 x 3`` affine matrix (OpenCV convention) that maps the image onto the view."""
    centre = ((width - 1) / 2.0, (height - 1) / 2.0)
    return cv2.getRotationMatrix2D(centre, view.rotation, view.scale)


def tta_probabilities(
    network: Network, batch: np.ndarray, views: Sequence[View] = DEFAULT_VIEWS
) -> np.ndarray:
    """Average ``network``'s probabilities over ``views`` of each image.

    Args:
        network: ``float32[B, 1, H, W]`` in [0, 1] -> ``float32[B, H, W]`` probabilities.
        batch: ``float32[B, 1, H, W]`` images in [0, 1].
        views: the views to average (must include one that covers every pixel, e.g. the identity,
            or pixels no view shows get probability 0).

    Returns:
        ``float32[B, H, W]`` probabilities in [0, 1], aligned with ``batch``.
    """
    if batch.ndim != 4 or batch.shape[1] != 1:
        raise LungsegError(f"TTA expects images of shape (B, 1, H, W), got {batch.shape}")
    if not views:
        raise LungsegError("TTA needs at least one view")
    n, _, height, width = batch.shape
    total = np.zeros((n, height, width), np.float32)
    weight = np.zeros((n, height, width), np.float32)
    ones = np.ones((height, width), np.float32)
    for view in views:
        if view == View():
            total += network(batch)
            weight += 1.0
            continue
        forward = view_matrix(view, height, width)
        back = cv2.invertAffineTransform(forward)
        shown = np.stack([_warp(image[0], forward) for image in batch])[:, None]
        prob = network(shown)
        # The same bilinear kernel for the probability and its coverage, so a pixel half inside
        # the view counts half.
        covered = _warp(ones, back)
        for i in range(n):
            total[i] += _warp(prob[i].astype(np.float32), back)
            weight[i] += covered
    prob = np.divide(total, weight, out=np.zeros_like(total), where=weight > 1e-6)
    return np.clip(prob, 0.0, 1.0, out=prob)


def _warp(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    height, width = image.shape
    return cv2.warpAffine(
        image, matrix, (width, height), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0.0,
    )  # fmt: skip


def tta_probabilities_torch(network: Any, batch: Any, views: Sequence[View] = DEFAULT_VIEWS):
    """:func:`tta_probabilities` on the network's device: ``batch`` is a ``float32[B, 1, H, W]``
    tensor there and ``network.probabilities`` maps such tensors to ``float32[B, H, W]``."""
    import torch
    import torch.nn.functional as F

    n, _, height, width = batch.shape
    total = torch.zeros((n, height, width), dtype=torch.float32, device=batch.device)
    weight = torch.zeros_like(total)
    ones = torch.ones((1, 1, height, width), dtype=torch.float32, device=batch.device)

    def warp(images, matrix):
        theta = _normalised_theta(matrix, height, width)
        theta = torch.as_tensor(theta, dtype=torch.float32, device=batch.device)
        theta = theta.expand(images.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(
            images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )

    for view in views:
        if view == View():
            total += network.probabilities(batch)
            weight += 1.0
            continue
        forward = view_matrix(view, height, width)
        back = cv2.invertAffineTransform(forward)
        prob = network.probabilities(warp(batch, forward))
        total += warp(prob[:, None], back)[:, 0]
        weight += warp(ones, back)[:, 0]
    prob = torch.where(weight > 1e-6, total / weight.clamp(min=1e-6), torch.zeros_like(total))
    return prob.clamp_(0.0, 1.0)


def _normalised_theta(matrix: np.ndarray, height: int, width: int) -> np.ndarray:
    """``affine_grid``'s ``theta`` that samples what ``cv2.warpAffine(image, matrix)`` shows:
    output pixel -> source pixel is ``matrix``'s inverse, written in the coordinates
    ``align_corners=False`` uses (pixel ``i`` at ``(2i + 1) / side - 1``)."""
    inverse = np.vstack([cv2.invertAffineTransform(matrix), [0.0, 0.0, 1.0]])
    to_norm = np.array([[2.0 / width, 0, 1.0 / width - 1], [0, 2.0 / height, 1.0 / height - 1],
                        [0, 0, 1.0]])  # fmt: skip
    return (to_norm @ inverse @ np.linalg.inv(to_norm))[:2]


class TTANetwork:
    """A network whose probabilities are averaged over TTA views (same call contract)."""

    def __init__(self, network: Network, views: Sequence[View] = DEFAULT_VIEWS) -> None:
        self.network = network
        self.views = tuple(views)

    @property
    def device(self) -> str:
        """The wrapped network's device (AttributeError where it has none, as ONNX models)."""
        return self.network.device

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if getattr(self.network, "cuda", False):
            import torch

            x = torch.from_numpy(batch).pin_memory().to(self.device, non_blocking=True)
            return tta_probabilities_torch(self.network, x, self.views).cpu().numpy()
        return tta_probabilities(self.network, batch, self.views)
