"""Data augmentation on whole batches, on the training device.

One random affine transform per image (small rotation, scaling, aspect change and shift) is
applied to the image and its mask alike, through ``F.affine_grid`` + ``F.grid_sample``;
brightness, contrast, gamma, sharpness and noise then change the image only: the ways films from
other hospitals differ (detector shape, exposure, the vendor's edge processing, dose). There is
no flip: a chest X-ray is not left-right symmetric (the heart is on the left), and the model
should keep that prior.

Every random number comes from the ``torch.Generator`` passed in, which training seeds from
``(seed, epoch, rank)``, so an epoch's augmentation is the same whether or not the run was
interrupted and resumed. The acquisition ranges (``aspect``, ``sharpness``, ``noise``) draw
their numbers after the others and only when one of them is set, so a run without them keeps
the stream it had before they existed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lungseg.training.config import AugmentConfig


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    config: AugmentConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly transform a batch.

    Args:
        images: ``float32[B, 1, H, W]`` in ``[0, 1]``.
        masks: ``float32[B, 1, H, W]`` in ``{0, 1}``.
        config: ranges of the transforms.
        generator: source of all random numbers; must live on ``images.device``.

    Returns:
        ``(images, masks)`` of the same shapes; images stay in ``[0, 1]``, masks in ``{0, 1}``.
        Pixels moved in from outside the image are 0 (black, background).
    """
    if not config.enabled:
        return images, masks
    n = images.shape[0]
    # Every parameter of every image from one draw (one kernel on a GPU): U(-1, 1) scaled by its
    # range. All are drawn even when a range is zero, so the stream does not depend on it.
    u = torch.rand(n, 7, generator=generator, device=images.device).mul_(2).sub_(1)
    angle = u[:, 0] * math.radians(config.rotation)
    zoom = 1 + u[:, 1] * config.scale
    shift = u[:, 2:4] * (2 * config.shift)  # grid units: [-1, 1]
    offset = u[:, 4] * config.brightness
    contrast = 1 + u[:, 5] * config.contrast
    gamma = torch.exp(u[:, 6] * math.log1p(config.gamma))
    acquisition = config.aspect > 0 or config.sharpness > 0 or config.noise > 0
    if acquisition:
        v = torch.rand(n, 3, generator=generator, device=images.device)
        stretch = torch.exp((v[:, 0] * 2 - 1) * (0.5 * math.log1p(config.aspect)))
        sharpen = (v[:, 1] * 2 - 1) * config.sharpness
        sigma = v[:, 2] * config.noise
    else:
        stretch = torch.ones_like(zoom)

    # affine_grid maps output coordinates to input ones: dividing by the zoom enlarges the image;
    # the stretch widens x and narrows y alike, so the area stays.
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    sx, sy = 1 / stretch, stretch
    theta = torch.stack(
        [
            torch.stack([cos * sx, -sin * sy, shift[:, 0]], 1),
            torch.stack([sin * sx, cos * sy, shift[:, 1]], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = (masks > 0.5).to(images.dtype)

    view = (n, 1, 1, 1)
    images = images.clamp(0, 1) ** gamma.view(view)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    images = (images - mean) * contrast.view(view) + mean + offset.view(view)
    if acquisition:
        images = images.clamp(0, 1)
        detail = images - F.avg_pool2d(images, 5, stride=1, padding=2, count_include_pad=False)
        images = images + sharpen.view(view) * detail
        noise = torch.randn(images.shape, generator=generator, device=images.device)
        images = images + sigma.view(view) * noise
    return images.clamp(0, 1), masks
