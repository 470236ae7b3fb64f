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

from lungseg.core.errors import LungsegError
from lungseg.inference.anatomy import anatomy_problem

#: Probabilities strictly between these bounds count as uncertain.
UNCERTAIN_LOW = 0.1
UNCERTAIN_HIGH = 0.9
#: Above this ``uncertain_fraction`` a mask is flagged for review (:func:`review_reason`), for a
#: model that records no threshold of its own (checkpoint key ``review_threshold``, set by
#: :func:`calibrate_review_threshold`). Chosen with ``unet-fast`` on the 355 development images:
#: it flags 12 % of them, among them all 4 with Dice below 0.90 and 9 of the 11 below 0.93; with
#: other models it misses most bad masks, hence one threshold per model.
REVIEW_THRESHOLD = 0.2
#: :func:`calibrate_review_threshold` aims to flag this share of the masks below :data:`BAD_DICE`.
REVIEW_RECALL = 0.9
BAD_DICE = 0.93
#: ... but flags at most this share of all images: a flag on most masks is no flag.
MAX_FLAGGED = 0.25


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


def review_reason(
    mask: np.ndarray,
    uncertainty: float | None = None,
    threshold: float = REVIEW_THRESHOLD,
    not_frontal_chest: str = "",
) -> str:
    """Why a mask must be looked at before it is used, or ``""``: the one rule that
    ``lungseg segment`` (the ``review`` column) and ``lungseg serve`` (the review flag) apply.

    Args:
        mask: ``bool[H, W]``, the final (postprocessed) mask.
        uncertainty: the image's :func:`uncertain_fraction`, when known.
        threshold: the model's review threshold (``Segmenter.review_threshold``).
        not_frontal_chest: why the file's DICOM header says it is not a frontal chest
            radiograph (:func:`lungseg.data.dicom_header.not_frontal_chest`); it comes first:
            the models know no other film.

    Returns:
        ``"not a frontal chest X-ray: ..."`` when the header says so; ``"no lung found"`` for
        an empty mask (a chest X-ray always shows lungs: the image is not one, or the model
        failed); ``"implausible: ..."`` when the mask breaks the anatomy
        (:func:`lungseg.inference.anatomy.anatomy_problem`: more than one lung per side,
        lung outside the thorax); ``"uncertain (U > T)"`` when ``uncertainty`` is above
        ``threshold``; else ``""``.
    """
    if not_frontal_chest:
        return f"not a frontal chest X-ray: {not_frontal_chest}"
    if not np.any(mask):
        return "no lung found"
    problem = anatomy_problem(mask)
    if problem:
        return f"implausible: {problem}"
    if uncertainty is not None and uncertainty > threshold:
        return f"uncertain ({uncertainty:.3f} > {threshold:g})"
    return ""


def calibrate_review_threshold(
    uncertainty: np.ndarray,
    dice: np.ndarray,
    recall: float = REVIEW_RECALL,
    bad: float = BAD_DICE,
    max_flagged: float = MAX_FLAGGED,
) -> float:
    """The review threshold of one model, from its validation images.

    The highest threshold that still flags ``recall`` of the masks with Dice below ``bad``
    (rounded down to 3 decimals, so it flags them), raised where it would flag more than
    ``max_flagged`` of all images; :data:`REVIEW_THRESHOLD` when no mask is that bad. The
    threshold is recorded in the checkpoint (``review_threshold``), so ``segment`` and ``serve``
    flag the masks of each model by its own scale of uncertainty.

    Args:
        uncertainty: ``float[N]`` :func:`uncertain_fraction` of the validation images.
        dice: ``float[N]`` their Dice against the ground truth.
        recall: share of the bad masks to flag.
        bad: Dice below which a mask counts as bad.
        max_flagged: the largest share of all images the threshold may flag.
    """
    u, d = np.asarray(uncertainty, float), np.asarray(dice, float)
    worst = np.sort(u[np.isfinite(u) & np.isfinite(d) & (d < bad)])
    if len(worst) == 0:
        return REVIEW_THRESHOLD
    # Flagging is "above the threshold": the k-th least uncertain bad mask must be above it.
    k = int(math.floor((1 - recall) * len(worst)))
    threshold = math.floor(worst[k] * 1000 - 1e-9) / 1000
    everyone = u[np.isfinite(u)]
    if np.mean(everyone > threshold) > max_flagged:
        # "higher": a value of the data, so that strictly above it is at most the share.
        higher = float(np.quantile(everyone, 1 - max_flagged, method="higher"))
        threshold = math.ceil(higher * 1000 - 1e-9) / 1000
    return threshold


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
    # Here, not at the top: scipy.stats takes a second to import, and every image's road (and
    # each DICOM encoder process) imports this module for uncertain_fraction alone.
    from scipy import stats

    return float(stats.spearmanr(u, 1.0 - d).statistic)
