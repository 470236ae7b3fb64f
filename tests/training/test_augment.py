"""Batch augmentation: one geometric transform for image and mask, reproducible, in range."""

from __future__ import annotations

import pytest
import torch

from lungseg.core.errors import LungsegError
from lungseg.training import AugmentConfig, augment_batch

GEOMETRY_ONLY = AugmentConfig(brightness=0, contrast=0, gamma=0)


def _batch(n: int = 8, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    masks = torch.zeros(n, 1, size, size)
    masks[:, :, 12:52, 8:28] = 1  # a "left lung" box, off centre so rotations and shifts show
    masks[:, :, 16:48, 36:56] = 1
    return masks.clone(), masks


def test_image_and_mask_get_the_same_geometric_transform():
    images, masks = _batch()
    out_img, out_mask = augment_batch(
        images, masks, GEOMETRY_ONLY, torch.Generator().manual_seed(1)
    )
    assert not torch.equal(out_mask, masks)  # something moved
    # The image is the mask: after the same warp, thresholding it gives the warped mask
    # (up to a pixel of interpolation along the edges).
    disagree = ((out_img > 0.5).float() != out_mask).float().mean()
    assert disagree < 0.01


def test_outputs_stay_in_range_and_masks_binary():
    images = torch.rand(8, 1, 32, 32)
    masks = (torch.rand(8, 1, 32, 32) > 0.5).float()
    out_img, out_mask = augment_batch(images, masks, AugmentConfig(), torch.Generator())
    assert out_img.shape == images.shape and out_mask.shape == masks.shape
    assert out_img.min() >= 0 and out_img.max() <= 1
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}


def test_same_generator_seed_gives_the_same_batch():
    images, masks = torch.rand(4, 1, 32, 32), (torch.rand(4, 1, 32, 32) > 0.5).float()
    a = augment_batch(images, masks, AugmentConfig(), torch.Generator().manual_seed(7))
    b = augment_batch(images, masks, AugmentConfig(), torch.Generator().manual_seed(7))
    c = augment_batch(images, masks, AugmentConfig(), torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_disabled_or_zero_ranges_leave_the_batch_unchanged():
    images, masks = torch.rand(4, 1, 32, 32), (torch.rand(4, 1, 32, 32) > 0.5).float()
    off = augment_batch(images, masks, AugmentConfig(enabled=False), torch.Generator())
    assert off[0] is images and off[1] is masks
    zero = AugmentConfig(rotation=0, scale=0, shift=0, brightness=0, contrast=0, gamma=0)
    out_img, out_mask = augment_batch(images, masks, zero, torch.Generator())
    assert torch.allclose(out_img, images, atol=1e-5)
    assert torch.equal(out_mask, masks)


def test_intensity_changes_do_not_touch_the_mask():
    images, masks = _batch(4, 32)
    intensity_only = AugmentConfig(rotation=0, scale=0, shift=0, brightness=0.3, contrast=0.3)
    out_img, out_mask = augment_batch(images, masks, intensity_only, torch.Generator())
    assert torch.equal(out_mask, masks)
    assert not torch.allclose(out_img, images)


def test_bad_ranges_are_refused():
    with pytest.raises(LungsegError, match="rotation"):
        AugmentConfig(rotation=-1)
    with pytest.raises(LungsegError, match="scale"):
        AugmentConfig(scale=1.5)


def test_aspect_widens_or_narrows_the_lungs_and_keeps_their_area():
    images, masks = _batch(16, 64)
    aspect_only = AugmentConfig(
        rotation=0, scale=0, shift=0, brightness=0, contrast=0, gamma=0, aspect=0.3
    )
    out_img, out_mask = augment_batch(images, masks, aspect_only, torch.Generator().manual_seed(3))
    rows = out_mask.amax(dim=3).sum(dim=(1, 2))  # rows that hold lung: 40 unchanged
    cols = out_mask.amax(dim=2).sum(dim=(1, 2))  # columns that hold lung: 20 + 20 unchanged
    ratio = cols / rows
    assert ratio.min() < 0.95 and ratio.max() > 1.05  # both ways
    assert ratio.min() > 1 / 1.3 - 0.06 and ratio.max() < 1.3 + 0.06  # within the range
    area = out_mask.sum(dim=(1, 2, 3)) / masks.sum(dim=(1, 2, 3))
    assert torch.allclose(area, torch.ones_like(area), atol=0.08)
    assert ((out_img > 0.5).float() != out_mask).float().mean() < 0.01  # image moved alike


def test_sharpness_and_noise_change_the_image_only():
    images, masks = _batch(8, 32)
    acquisition = AugmentConfig(
        rotation=0, scale=0, shift=0, brightness=0, contrast=0, gamma=0, sharpness=1, noise=0.05
    )
    out_img, out_mask = augment_batch(images, masks, acquisition, torch.Generator().manual_seed(2))
    assert torch.equal(out_mask, masks)
    inside = out_img[:, :, 20:40, 16:24]  # the flat inside of a box: only noise there
    assert 0.005 < inside.std() < 0.05
    # At a box's edge the unsharp mask overshoots (sharpen) or blurs (soften) the step.
    edge = out_img[:, 0, 30, 27] - images[:, 0, 30, 27]
    assert (edge.abs() > 0.05).any()


def test_a_run_without_the_acquisition_ranges_keeps_its_stream():
    """Runs trained before aspect/sharpness/noise existed resume bit-identically."""
    images, masks = torch.rand(4, 1, 32, 32), (torch.rand(4, 1, 32, 32) > 0.5).float()
    generator = torch.Generator().manual_seed(5)
    augment_batch(images, masks, AugmentConfig(), generator)
    reference = torch.Generator().manual_seed(5)
    torch.rand(4, 7, generator=reference)  # the seven draws of the geometric and exposure ranges
    assert torch.equal(generator.get_state(), reference.get_state())
    with pytest.raises(LungsegError, match="noise"):
        AugmentConfig(noise=-0.1)


def test_a_checkpoint_older_than_the_acquisition_ranges_reads_as_without_them():
    from lungseg.core.config import to_dict
    from lungseg.training.config import TrainConfig, stored_settings

    old = to_dict(TrainConfig())
    for key in ("aspect", "sharpness", "noise"):
        del old["augment"][key]
    del old["exclude"]
    assert stored_settings({"train_config": old}) == to_dict(TrainConfig())
