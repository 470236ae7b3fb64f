"""Quality control without ground truth: which masks to review first.

A model is unsure where its lung probability is neither low nor high. The share of such pixels,
relative to the predicted lung area, ranks new images by how likely their mask is wrong: on the
validation split of the development data its rank correlation with the error (1 - Dice) was
0.61 for the shipped U-Net and 0.71 for the FCN. ``lungseg segment`` writes it for every image
(``measurements.csv``, column ``uncertain_fraction``) and ``lungseg evaluate`` reports the
correlation on any labelled dataset, so users can check it holds on their own data.

Some masks need a look whatever their uncertainty: :func:`review_reason` names them. An empty
mask is the case that matters: a model sure that an image holds no lung scores an
``uncertain_fraction`` of 0, which would rank it last for review.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from lungseg.core.errors import LungsegError

#: Probabilities strictly between these bounds count as uncertain.
UNCERTAIN_LOW = 0.1
UNCERTAIN_HIGH = 0.9
#: Above this ``uncertain_fraction`` a mask is flagged for review (:func:`review_reason`).
#: Chosen with ``unet-fast`` on the 355 development images: it flags 12 % of them, among them all
#: 4 with Dice below 0.90 and 9 of the 11 below 0.93. Most of those images were seen in
#: training, so expect a larger share of new images to be flagged.
REVIEW_THRESHOLD = 0.2


def uncertain_fraction(prob: np.ndarray) -> np.ndarray:
    """The share of the lung the model is unsure about, per image: in [0, 1].

    Args:
        prob: ``float[N, H, W]`` (or ``float[H, W]``) lung probabilities in [0, 1].

    Returns:
        ``float64[N]`` (or a 0-d array): the count of unsure pixels
        (``UNCERTAIN_LOW < p < UNCERTAIN_HIGH``) divided by the count of pixels that are lung
        (``p > 0.5``) or unsure. Dividing by the lung alone gave more than 1 where most unsure
        pixels lie outside it (1.158 on a noise image); an image with no lung predicted but
        unsure pixels still scores 1, and an image with neither scores 0.
    """
    prob = np.asarray(prob)
    if prob.ndim not in (2, 3):
        raise LungsegError(f"probability maps must be (H, W) or (N, H, W), got {prob.shape}")
    axes = (-2, -1)
    unsure_mask = (prob > UNCERTAIN_LOW) & (prob < UNCERTAIN_HIGH)
    unsure = unsure_mask.sum(axis=axes)
    region = (unsure_mask | (prob > 0.5)).sum(axis=axes)
    return unsure / np.maximum(region, 1).astype(np.float64)


def review_reason(mask: np.ndarray, uncertainty: float | None = None) -> str:
    """Why a mask must be looked at before it is used, or ``""``: the one rule that
    ``lungseg segment`` (the ``review`` column) and ``lungseg serve`` (the review flag) apply.

    Args:
        mask: ``bool[H, W]``, the final (postprocessed) mask.
        uncertainty: the image's :func:`uncertain_fraction`, when known.

    Returns:
        ``"no lung found"`` for an empty mask (a chest X-ray always shows lungs: the image is
        not one, or the model failed); ``"uncertain (U > 0.2)"`` when ``uncertainty`` is above
        :data:`REVIEW_THRESHOLD`; else ``""``.
    """
    if not np.any(mask):
        return "no lung found"
    if uncertainty is not None and uncertainty > REVIEW_THRESHOLD:
        return f"uncertain ({uncertainty:.3f} > {REVIEW_THRESHOLD})"
    return ""


def error_rank_correlation(uncertainty: np.ndarray, dice: np.ndarray) -> float:
    """Spearman correlation between ``uncertainty`` and the error ``1 - dice`` (NaN-free images).

    1 means the most uncertain masks are exactly the worst ones; 0, no relation. NaN with fewer
    than three usable images or when either side is constant.
    """
    u, d = np.asarray(uncertainty, float), np.asarray(dice, float)
    keep = np.isfinite(u) & np.isfinite(d)
    u, d = u[keep], d[keep]
    if len(u) < 3 or np.ptp(u) == 0 or np.ptp(d) == 0:
        return math.nan
    return float(stats.spearmanr(u, 1.0 - d).statistic)
