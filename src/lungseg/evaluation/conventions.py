"""Mask conventions: telling from the scores whether a model and a dataset draw the lung alike.

Two conventions exist (:data:`~lungseg.models.identity.CONVENTIONS`): ``anatomical`` masks include
the lung behind the heart down to the diaphragm (the masks of ``covid-cxr``), ``visible`` ones
cover the visible lung fields only (the COVID-19 Radiography Database's own masks, JSRT,
Montgomery, Shenzhen). On the same film they differ by 15-30 % of the lung area, so a model scored
against the other convention's masks loses 0.08-0.15 Dice even where it is right by its own rule.

:func:`convention_check` recognises that pattern in an evaluation: the predicted area is
consistently larger (or smaller) than the ground truth's, with recall far above precision (or
below), image after image. ``lungseg evaluate`` writes its result into ``metrics.json``
(``convention_check``) and prints its one-line warning.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The median predicted / true area ratio beyond which (or below whose inverse) areas disagree.
AREA_RATIO = 1.12
#: Share of images whose area ratio must lie on the same side of 1 for "consistently".
CONSISTENT_SHARE = 0.75
#: Mean recall minus mean precision (or the reverse) that counts as "recall >> precision".
RECALL_GAP = 0.08


def convention_check(
    pred: np.ndarray,
    target: np.ndarray,
    model_convention: str = "unknown",
    data_convention: str = "unknown",
) -> dict[str, Any]:
    """Whether the predictions follow another mask convention than the ground truth.

    Args:
        pred: ``bool[N, H, W]`` predicted masks.
        target: ``bool[N, H, W]`` ground-truth masks of the same images.
        model_convention: the model's convention (``Segmenter.convention``).
        data_convention: the dataset's, as its ``prepare`` settings state it.

    Returns:
        ``area_ratio_median`` (predicted / true lung area), ``larger_share`` (images whose
        prediction is larger), ``recall_mean``, ``precision_mean``, the two conventions, and
        ``mismatch``: ``"larger"`` when the model's masks are consistently larger with recall far
        above precision (an anatomical model on visible-field masks), ``"smaller"`` for the
        reverse, else ``None``; ``warning``: one line for people, or ``None``.
    """
    pred = np.asarray(pred, bool).reshape(len(pred), -1)
    target = np.asarray(target, bool).reshape(len(target), -1)
    tp = (pred & target).sum(1).astype(np.float64)
    pred_area, true_area = pred.sum(1).astype(np.float64), target.sum(1).astype(np.float64)
    keep = (pred_area > 0) & (true_area > 0)
    ratio = pred_area[keep] / true_area[keep]
    recall = float(np.mean(tp[keep] / true_area[keep])) if keep.any() else float("nan")
    precision = float(np.mean(tp[keep] / pred_area[keep])) if keep.any() else float("nan")
    median = float(np.median(ratio)) if keep.any() else float("nan")
    larger = float(np.mean(ratio > 1)) if keep.any() else float("nan")
    mismatch = None
    if keep.sum() >= 3:
        if median >= AREA_RATIO and larger >= CONSISTENT_SHARE and recall - precision > RECALL_GAP:
            mismatch = "larger"
        elif (
            median <= 1 / AREA_RATIO
            and 1 - larger >= CONSISTENT_SHARE
            and precision - recall > RECALL_GAP
        ):
            mismatch = "smaller"
    warning = None
    if mismatch:
        warning = (
            f"the model's masks are consistently {mismatch} than the ground truth's (median area "
            f"x{median:.2f}, recall {recall:.3f} vs precision {precision:.3f}): the model "
            f"({model_convention} convention) and the data ({data_convention}) probably draw "
            "the lung differently; score a model of the data's convention (see README, "
            "'Mask conventions')"
        )
    return {
        "model_convention": model_convention,
        "data_convention": data_convention,
        "area_ratio_median": median,
        "larger_share": larger,
        "recall_mean": recall,
        "precision_mean": precision,
        "mismatch": mismatch,
        "warning": warning,
    }
