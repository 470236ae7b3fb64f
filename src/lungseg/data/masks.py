"""Ground-truth masks: a decoded mask's grey levels -> lung or not, and what is not a mask."""

from __future__ import annotations

import numpy as np

from lungseg.core.errors import LungsegError

#: A mask may hold at most this share of pixels in the middle of its range (between a quarter and
#: three quarters of its maximum); more is not a binary mask with antialiased or JPEG-rounded
#: edges (under 0.3 % there, even at JPEG quality 30) but probably an image (50-80 %).
MASK_MAX_GREY_FRACTION = 0.05


def binarize_mask(mask: np.ndarray, name: str) -> np.ndarray:
    """``uint8[H, W]`` mask -> ``bool[H, W]`` lung.

    Rule: masks stored as 0/1 are taken as is; otherwise a pixel is lung when it is at least half
    the maximum value (so 0/255, antialiased edges and JPEG masks work: JPEG's rounding leaves
    values near 0 and near the top). A mask with more than :data:`MASK_MAX_GREY_FRACTION` of
    its pixels in the middle of its range is rejected (an image, or labels 0/1/2), as is an
    empty mask.
    """
    top = int(mask.max())
    if top == 0:
        raise LungsegError("empty mask (no lung pixels)", name)
    if top == 1:
        return mask.astype(bool)
    # mid-grey: above a quarter and below three quarters of the top, in whole grey levels
    low, high = top // 4, -(-3 * top // 4)
    grey = np.count_nonzero((mask > low) & (mask < high))
    if grey > MASK_MAX_GREY_FRACTION * mask.size:
        levels = np.unique(mask)
        shown = ", ".join(str(v) for v in levels[:6]) + (", ..." if len(levels) > 6 else "")
        raise LungsegError(
            f"mask has {len(levels)} distinct values ({shown}) with {grey / mask.size:.0%} "
            "of its pixels mid-grey; expected a binary mask (0/1 or 0/255)",
            name,
        )
    return mask >= (top + 1) // 2
