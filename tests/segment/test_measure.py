"""Lung measurements and what segment writes per image: right/left areas (hand-made cases and
the straightforward whole-image rule as an oracle), the side map, 1-bit masks, overlays."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lungseg.inference.measure import BILATERAL_SHARE
from lungseg.segment import lung_areas, lung_sides, mask_png, measure, overlay, overlay_jpeg


def reference_areas(mask: np.ndarray) -> tuple[int, int]:
    """The rule of :func:`lung_areas` done the plain way: connected components of the whole
    mask, one full-size pass per component."""
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), 8)
    width = mask.shape[1]
    mid = width / 2.0
    right = left = 0
    for i in range(1, count):
        area = int(stats[i, cv2.CC_STAT_AREA])
        component = labels == i
        on_right = int(component[:, : int(mid)].sum())
        if min(on_right, area - on_right) >= BILATERAL_SHARE * area:
            lo, hi = int(0.3 * width), max(int(0.7 * width), int(0.3 * width) + 1)
            counts = component[:, lo:hi].sum(axis=0)
            candidates = lo + np.flatnonzero(counts == counts.min())
            cut = int(candidates[np.argmin(np.abs(candidates - width / 2.0))])
            on_right = int(component[:, :cut].sum())
            right, left = right + on_right, left + area - on_right
        elif centroids[i][0] < mid:
            right += area
        else:
            left += area
    return right, left


def test_lung_areas_by_side() -> None:
    mask = np.zeros((10, 20), bool)
    mask[2:5, 1:4] = True  # 9 px on the image's left: the patient's right lung
    mask[2:6, 12:17] = True  # 20 px on the image's right: the patient's left lung
    assert lung_areas(mask) == (9, 20)
    row = measure("a.dcm", "in/a.dcm", mask, (0.5, 0.4))
    assert (row["key"], row["file"]) == ("a.dcm", "in/a.dcm")
    assert row["lung_px"] == 29 and row["lung_fraction"] == pytest.approx(29 / 200)
    assert row["lung_cm2"] == pytest.approx(29 * 0.2 / 100)
    assert row["right_lung_cm2"] == pytest.approx(9 * 0.2 / 100)


def test_lungs_joined_across_the_midline_are_cut_at_the_mediastinum() -> None:
    mask = np.zeros((40, 40), bool)
    mask[5:35, 4:18] = True  # 420 px: right lung
    mask[8:38, 23:36] = True  # 390 px: left lung
    mask[30:33, 18:23] = True  # 15 px: a bridge over the heart, narrowest at columns 18..22
    right, left = lung_areas(mask)
    assert right + left == int(mask.sum())
    assert abs(right - 420) <= 9 and abs(left - 390) <= 9  # the bridge is shared, the lungs not
    one_lung = np.zeros((40, 40), bool)
    one_lung[5:35, 4:22] = True  # a right lung reaching just over the midline stays whole
    assert lung_areas(one_lung) == (int(one_lung.sum()), 0)
    sides = lung_sides(mask)
    assert ((sides == 1).sum(), (sides == 2).sum()) == (right, left)
    assert (sides[:, :10] != 2).all() and (sides[:, 30:] != 1).all()


@settings(max_examples=300, deadline=None)
@given(
    arrays(np.bool_, st.tuples(st.integers(1, 24), st.integers(1, 33))),
    st.booleans(),
)
def test_lung_areas_and_sides_follow_the_whole_image_rule(mask: np.ndarray, blobs: bool) -> None:
    if blobs:  # larger connected shapes, like lungs, besides salt and pepper
        mask = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert lung_areas(mask) == reference_areas(mask)
    sides = lung_sides(mask)
    assert ((sides > 0) == mask).all()
    assert ((sides == 1).sum(), (sides == 2).sum()) == lung_areas(mask)


def test_masks_are_one_bit_pngs_that_read_back_as_0_255() -> None:
    from PIL import Image

    mask = np.zeros((37, 51), bool)
    mask[5:30, 7:20] = True
    data = mask_png(mask)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "1" and im.size == (51, 37)
    back = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint8 and set(np.unique(back)) == {0, 255}
    np.testing.assert_array_equal(back > 127, mask)


def test_overlay_tints_and_outlines_the_lungs() -> None:
    image = np.full((60, 80), 200, np.uint8)
    mask = np.zeros((60, 80), bool)
    mask[10:50, 10:40] = True
    bgr = overlay(image, mask)
    assert bgr.shape == (60, 80, 3)
    assert tuple(bgr[30, 25]) == (100, 227, 100)  # inside: halved, green + 127
    assert tuple(bgr[30, 70]) == (200, 200, 200)  # outside: the X-ray
    assert tuple(bgr[10, 25]) == (0, 255, 255)  # the outline
    jpeg = cv2.imdecode(np.frombuffer(overlay_jpeg(image, mask), np.uint8), cv2.IMREAD_COLOR)
    assert jpeg.shape == (60, 80, 3)
    assert np.abs(jpeg.astype(int) - bgr.astype(int)).mean() < 6
