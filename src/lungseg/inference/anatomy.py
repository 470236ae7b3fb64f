"""Anatomical plausibility of a lung mask: at most one lung per side, none outside the chest.

:func:`keep_lungs` is the postprocessing step that chooses the lungs among a mask's components
(:mod:`lungseg.inference.postprocessing` runs it); :func:`anatomy_problem` names what is still
implausible in a final mask, which :func:`lungseg.inference.quality.review_reason` turns into a
review flag, so a mask is never silently reduced to one lung. Both are pure functions,
``bool[H,W]`` in.
"""

from __future__ import annotations

import cv2
import numpy as np

#: A blob beside a lung and at least this share of the lung's size is not dropped silently:
#: :func:`keep_lungs` drops it, and the mask counts as a catastrophe candidate in reviews.
OUTSIDE_MIN_SHARE = 0.3
#: :func:`anatomy_problem`: the smaller lung must be at least this share of the larger one.
MIN_LUNG_RATIO = 0.25
#: :func:`anatomy_problem`: pieces smaller than this share of the mask are specks, not lungs.
PIECE_SHARE = 0.02
#: :func:`anatomy_problem`: a lung lying on the image's side edge along more than this share of
#: the image height has probably grown into the air beside the chest.
EDGE_SHARE = 0.3
#: :func:`anatomy_problem`: a piece with more than this share of its area on each half of the
#: image is both lungs joined (across the mediastinum, or through the neck).
JOINED_SHARE = 0.2


def keep_lungs(mask: np.ndarray, min_fraction: float = 0.0) -> np.ndarray:
    """At most one lung on each side of the image, each inside the thorax.

    Components are assigned to the image's left or right half by their centroid. On each side a
    component that touches the image's outer edge and lies wholly outside (lateral to) the centre
    of another component on that side, one at least :data:`OUTSIDE_MIN_SHARE` of its size, is
    outside the chest (the air between arm and flank, which models trained on cropped figures
    take for lung); of the rest, the largest is that side's lung. Unlike keeping the two largest
    components, this cannot keep a flank blob and drop the lung beside it (the FCN's 0.345 Dice
    on a Shenzhen film). A mask left with one lung is not made plausible here:
    :func:`anatomy_problem` names it, and reviews flag it.

    Args:
        mask: ``bool[H,W]``.
        min_fraction: components smaller than this fraction of the largest are dropped first.

    Returns:
        ``bool[H,W]`` with at most two components; all-False stays all-False.
    """
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    if count <= 1:
        return np.zeros(mask.shape, dtype=bool)
    width = mask.shape[1]
    areas = stats[1:, cv2.CC_STAT_AREA]
    left = stats[1:, cv2.CC_STAT_LEFT]
    right = left + stats[1:, cv2.CC_STAT_WIDTH] - 1
    cx = centroids[1:, 0]
    big = np.flatnonzero(areas >= min_fraction * areas.max())
    keep = np.zeros(count, dtype=bool)
    for on_left in (True, False):
        side = [i for i in big if (cx[i] < width / 2) == on_left]

        def outside(b: int, side: list[int] = side, on_left: bool = on_left) -> bool:
            at_edge = left[b] == 0 if on_left else right[b] == width - 1
            beyond = (lambda a: right[b] < cx[a]) if on_left else (lambda a: left[b] > cx[a])
            return at_edge and any(
                a != b and beyond(a) and areas[a] >= OUTSIDE_MIN_SHARE * areas[b] for a in side
            )

        inside = [i for i in side if not outside(i)]
        if inside:
            # max() keeps the first of equal areas (label, i.e. raster, order): deterministic.
            keep[max(inside, key=lambda i: areas[i]) + 1] = True
    return keep[labels]


#: Longest side, in pixels, at which :func:`anatomy_problem` looks at a mask: the anatomy is a
#: matter of shape, and on a full-resolution film (up to 15 MP) the connected components took
#: 25 ms of the 44 ms ``segment`` spends on an image; a mask is shrunk to this size first.
CHECK_SIZE = 512


def _at_most(mask: np.ndarray, size: int) -> np.ndarray:
    """``bool[H, W]`` shrunk (nearest pixel: a copy of every k-th row and column, which is all a
    shape check needs and costs no pass over the whole mask) so that its longer side is at most
    ``size``; contiguous ``bool`` either way."""
    h, w = mask.shape
    scale = size / max(h, w)
    m8 = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    if scale >= 1:
        return m8.view(bool)
    small = cv2.resize(
        m8, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_NEAREST
    )
    return small.view(bool)


def anatomy_problem(mask: np.ndarray) -> str:
    """What makes a lung mask anatomically implausible, or ``""``.

    Checked on the final mask: no piece spread over both halves of the image (lungs joined), a
    lung on each side of the image (the patient's right lung is on
    the image's left), no side in several pieces, neither lung under :data:`MIN_LUNG_RATIO` of
    the other, and no lung along more than :data:`EDGE_SHARE` of the image's side edge (a lung
    merged with a blob outside the chest). Pieces under :data:`PIECE_SHARE` of the mask are
    ignored. An empty mask is another problem (``"no lung found"``, see
    :func:`lungseg.inference.quality.review_reason`) and gives ``""`` here.

    Args:
        mask: ``bool[H,W]``.
    """
    mask = _at_most(mask, CHECK_SIZE)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(
        mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    areas = stats[1:, cv2.CC_STAT_AREA]
    if count <= 1:
        return ""
    pieces = areas >= PIECE_SHARE * areas.sum()
    half = mask.shape[1] // 2
    on_image_left = np.bincount(labels[:, :half].ravel(), minlength=count)[1:]
    for i in np.flatnonzero(pieces):
        if min(on_image_left[i], areas[i] - on_image_left[i]) > JOINED_SHARE * areas[i]:
            return "the lungs are joined across the middle"
    on_left = centroids[1:, 0] < mask.shape[1] / 2
    sides = {"patient's right": pieces & on_left, "patient's left": pieces & ~on_left}
    for name, which in sides.items():
        if not which.any():
            return f"no lung on the {name}"
        if which.sum() > 1:
            return f"the {name} lung in {int(which.sum())} pieces"
    right, left = (int(areas[which].sum()) for which in sides.values())
    if min(right, left) < MIN_LUNG_RATIO * max(right, left):
        return f"lungs of very unequal size ({right} and {left} px)"
    height = mask.shape[0]
    for name, column in (("patient's right", mask[:, 0]), ("patient's left", mask[:, -1])):
        if column.sum() > EDGE_SHARE * height:
            return f"the {name} lung runs along the image edge (outside the chest?)"
    return ""


__all__ = ["anatomy_problem", "keep_lungs"]
